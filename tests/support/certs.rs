//! A throwaway certificate authority and server certificate for TLS tests.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

pub struct TestCerts {
    /// The certificate to trust (`sslrootcert`).
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// A CA and a server certificate it signed, valid for `names` (DNS names
/// or IP addresses).
pub fn generate(names: &[&str]) -> TestCerts {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ferry test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut server_params = CertificateParams::new(names).unwrap();
    server_params.distinguished_name.push(rcgen::DnType::CommonName, "ferry test server");
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
    TestCerts {
        ca_pem: ca.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

/// A self-signed server certificate that names its host only in its
/// common name and says it is a CA, as `openssl req -x509 -subj
/// "/CN=host"` makes one (PostgreSQL's documentation's recipe): it is its
/// own root.
pub fn self_signed_by_common_name(host: &str) -> TestCerts {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, host);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCerts { ca_pem: cert.pem(), server_cert_pem: cert.pem(), server_key_pem: key.serialize_pem() }
}

//! Whether a server certificate names the host connected to, by libpq's
//! rules: its subject alternative names of type DNS and IP address, and,
//! only when it has none of those, its subject's common name (which
//! certificates made as PostgreSQL's documentation shows carry alone). A
//! name `*.example.com` stands for one label, as `db.example.com`.

use std::net::IpAddr;

use rustls::pki_types::{CertificateDer, ServerName};
use x509_cert::Certificate;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::db::rfc4519::COMMON_NAME;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// The names a server certificate answers to.
#[derive(Debug, Default)]
pub struct CertNames {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    /// Read only without alternative names of the two kinds above.
    common_name: Option<String>,
}

impl CertNames {
    /// The names of `cert`; none when it cannot be parsed.
    pub fn read(cert: &CertificateDer<'_>) -> CertNames {
        let Ok(cert) = Certificate::from_der(cert.as_ref()) else { return CertNames::default() };
        let mut names = CertNames::default();
        if let Ok(Some((_, SubjectAltName(alt_names)))) = cert.tbs_certificate.get::<SubjectAltName>() {
            for name in alt_names {
                match name {
                    GeneralName::DnsName(dns) => names.dns.push(dns.as_str().to_string()),
                    GeneralName::IpAddress(bytes) => names.ips.extend(ip_address(bytes.as_bytes())),
                    _ => {}
                }
            }
        }
        if names.dns.is_empty() && names.ips.is_empty() {
            names.common_name = common_name(&cert).map(str::to_string);
        }
        names
    }

    /// Whether one of the names is `host`.
    pub fn include(&self, host: &ServerName<'_>) -> bool {
        match host {
            ServerName::DnsName(name) => {
                self.dns.iter().chain(&self.common_name).any(|n| name_matches(n, name.as_ref()))
            }
            ServerName::IpAddress(ip) => {
                let ip = IpAddr::from(*ip);
                self.ips.contains(&ip)
                    || self.dns.iter().chain(&self.common_name).any(|n| name_matches(n, &ip.to_string()))
            }
            _ => false,
        }
    }

    /// The names, for an error message.
    pub fn listed(&self) -> Vec<String> {
        let ips = self.ips.iter().map(IpAddr::to_string);
        self.dns
            .iter()
            .cloned()
            .chain(ips)
            .chain(self.common_name.iter().map(|cn| format!("CN={cn}")))
            .collect()
    }
}

/// The subject's first common name, when it is a string.
fn common_name(cert: &Certificate) -> Option<&str> {
    let value =
        cert.tbs_certificate.subject.0.iter().flat_map(|rdn| rdn.0.iter()).find(|a| a.oid == COMMON_NAME)?;
    let value = &value.value;
    match value.tag() {
        Tag::Utf8String => value.decode_as::<Utf8StringRef<'_>>().ok().map(|s| s.as_str()),
        Tag::PrintableString => value.decode_as::<PrintableStringRef<'_>>().ok().map(|s| s.as_str()),
        Tag::Ia5String => value.decode_as::<Ia5StringRef<'_>>().ok().map(|s| s.as_str()),
        _ => None,
    }
}

fn ip_address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// libpq's comparison of a certificate name with the host: equal but for
/// case, or `*.` followed by the host's tail, the part before it one label.
fn name_matches(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = name.strip_prefix('*') else { return false };
    if !suffix.starts_with('.') || suffix.len() < 2 || host.len() <= suffix.len() {
        return false;
    }
    let (label, tail) = host.split_at(host.len() - suffix.len());
    tail.eq_ignore_ascii_case(suffix) && !label.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(alt_names: &[&str], common_name: Option<&str>) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(alt_names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().clone()
    }

    fn names(cert: &CertificateDer<'static>, host: &str) -> bool {
        CertNames::read(cert).include(&ServerName::try_from(host.to_string()).unwrap())
    }

    #[test]
    fn alternative_names_of_both_kinds_are_checked() {
        let cert = cert(&["db.example.com", "10.0.0.7"], None);
        assert!(names(&cert, "db.example.com"));
        assert!(names(&cert, "DB.Example.COM"));
        assert!(names(&cert, "10.0.0.7"));
        assert!(!names(&cert, "10.0.0.8"));
        assert!(!names(&cert, "example.com"));
    }

    #[test]
    fn the_common_name_counts_only_without_alternative_names() {
        let alone = cert(&[], Some("db.example.com"));
        assert!(names(&alone, "db.example.com"));
        assert!(!names(&alone, "other.example.com"));
        let beside = cert(&["other.example.com"], Some("db.example.com"));
        assert!(!names(&beside, "db.example.com"), "an alternative name present: the common name is ignored");
        assert!(names(&beside, "other.example.com"));
        assert!(!names(&cert(&[], None), "db.example.com"));
        assert_eq!(CertNames::read(&alone).listed(), ["CN=db.example.com"]);
        assert_eq!(CertNames::read(&beside).listed(), ["other.example.com"]);
    }

    #[test]
    fn a_wildcard_stands_for_one_label() {
        assert!(name_matches("*.example.com", "db.example.com"));
        assert!(name_matches("*.example.com", "DB.EXAMPLE.com"));
        assert!(!name_matches("*.example.com", "a.db.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("*example.com", "dbexample.com"));
        assert!(!name_matches("*.", "db."));
        assert!(names(&cert(&[], Some("*.example.com")), "db.example.com"));
    }
}

//! Arbitrary bytes into the pgoutput decoder: it must never panic, and
//! whatever it accepts must survive encode → decode unchanged.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry::pg::pgoutput::{DecodeOptions, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the options, so one corpus covers every wire shape.
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let opts = DecodeOptions {
        in_stream: selector & 1 != 0,
        stream_abort_info: selector & 2 != 0,
    };
    if let Ok(msg) = decode(Bytes::copy_from_slice(frame), opts) {
        let mut out = BytesMut::new();
        msg.encode(opts, &mut out);
        let again = decode(out.freeze(), opts);
        assert_eq!(
            again.as_ref(),
            Ok(&msg),
            "re-encoded message decodes differently"
        );
    }
});

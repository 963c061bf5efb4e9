//! `POST /run` multipart bodies (boundary `XyZ`, limit 64 KiB): never a panic, only a job,
//! a 400 or a 413.
#![no_main]

use kakoi::server::ErrorKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = kakoi::server::request::job_from_multipart_bytes(data, "XyZ", 64 << 10) {
        assert!(
            matches!(e.kind, ErrorKind::BadRequest | ErrorKind::PayloadTooLarge),
            "{e:?}"
        );
    }
});

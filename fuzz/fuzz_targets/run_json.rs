//! `POST /run` JSON bodies: never a panic, only a job or a 400.
#![no_main]

use kakoi::server::ErrorKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = kakoi::server::request::job_from_json(data) {
        assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
    }
});

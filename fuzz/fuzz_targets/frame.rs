//! Launcher protocol frames from a hostile pipe: never a panic, never an allocation past
//! the frame limit.
#![no_main]

use kakoi::server::protocol::{FromWorker, ToWorker, read_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(_)) = read_frame::<_, ToWorker>(&mut r) {}
    let mut r = data;
    while let Ok(Some(_)) = read_frame::<_, FromWorker>(&mut r) {}
});

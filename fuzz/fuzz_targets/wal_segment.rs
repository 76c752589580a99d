#![no_main]
//! The body is shared with the suite's corpus replay: see
//! `strata_server::fuzz_targets::wal_segment`.
//!
//! The WAL codec catches arrow-ipc's panics on damaged streams and answers
//! an error; libfuzzer-sys's panic hook would abort on them first. Restore
//! the default hook: a panic that escapes the body still aborts (libfuzzer-sys
//! catches it and aborts), so real crashes are still found.

libfuzzer_sys::fuzz_target!(
    init: {
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| strata_server::fuzz_targets::wal_segment(data)
);

#![no_main]
//! The body is shared with the suite's corpus replay: see
//! `strata_server::fuzz_targets::line_protocol`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_server::fuzz_targets::line_protocol(data));

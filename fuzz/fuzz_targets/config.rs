#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: lb_fuzz::init("config"), |data: &[u8]| lb_fuzz::checks::config(data));

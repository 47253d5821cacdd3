#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: lb_fuzz::init("control_request"), |data: &[u8]| lb_fuzz::checks::control_request(data));

#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: lb_fuzz::init("http_reply"), |data: &[u8]| lb_fuzz::checks::http_reply(data));

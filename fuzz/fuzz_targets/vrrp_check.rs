#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: lb_fuzz::init("vrrp_check"), |data: &[u8]| lb_fuzz::checks::vrrp_check(data));

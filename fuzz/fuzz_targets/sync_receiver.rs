#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: lb_fuzz::init("sync_receiver"), |data: &[u8]| lb_fuzz::checks::sync_receiver(data));

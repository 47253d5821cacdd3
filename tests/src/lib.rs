//! Test support: exact packet fixtures, network namespaces with real peers, and the
//! harness that runs the XDP program through BPF_PROG_TEST_RUN.
pub mod blip_bench;
pub mod daemon_bench;
pub mod e2e_lab;
pub mod ecmp_lab;
pub mod hitless_bench;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod report;
pub mod scale_bench;
pub mod sync_bench;
pub mod vrrp_bench;
pub mod vrrp_flood;
pub mod vrrp_lab;
pub mod xdp;

//! keepalived's keywords as the importer sees them: the other names keepalived accepts for the
//! ones lb-daemon supports, and the ones lb-daemon does not support, with why.
//!
//! The lists follow keepalived.conf(5) of keepalived 2.3 and its parsers (`check_parser.c`,
//! `vrrp_parser.c`, `global_parser.c`). A keyword in neither list (the supported ones are in
//! `convert.rs`) is unknown to the importer; inside a block it is listed as unsupported too,
//! since keepalived itself skips an unknown keyword with a warning, and an unknown top-level
//! block is an error.

/// The block a keyword is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    Top,
    GlobalDefs,
    VrrpScript,
    SyncGroup,
    Instance,
    Authentication,
    VirtualServer,
    RealServer,
    TcpCheck,
    HttpGet,
    SslGet,
    Url,
    MiscCheck,
    DnsCheck,
    UdpCheck,
    PingCheck,
    SmtpCheck,
    /// The top-level `SSL` block (SSL_GET's client settings).
    Ssl,
    /// A top-level `track_file` block.
    TrackFile,
    /// A top-level `vrrp_track_process` block.
    TrackProcess,
    FileCheck,
}

/// The keywords lb-daemon supports, by the block they are in (keepalived's names and aliases).
/// Documentation, and the list the corpus test checks it exercises, keyword by keyword.
pub const SUPPORTED: &[(&str, &[&str])] = &[
    (
        "top level",
        &[
            "global_defs",
            "vrrp_script",
            "vrrp_sync_group",
            "vrrp_instance",
            "virtual_server",
            "include",
            "track_file",
            "vrrp_track_file",
            "vrrp_track_process",
            "virtual_server_group",
        ],
    ),
    ("track_file", &["file", "weight", "init_file"]),
    (
        "vrrp_track_process",
        &[
            "process",
            "param_match",
            "weight",
            "quorum",
            "quorum_max",
            "delay",
            "fork_delay",
            "terminate_delay",
            "full_command",
        ],
    ),
    (
        "global_defs",
        &[
            "router_id",
            "lvs_id",
            "vrrp_version",
            "enable_script_security",
            "script_user",
            "disable_local_igmp",
            "vrrp_garp_master_delay",
            "vrrp_garp_master_repeat",
            "vrrp_garp_master_refresh",
            "vrrp_garp_master_refresh_repeat",
            "lvs_sync_daemon",
            "lvs_timeouts",
            "notify_fifo",
            "vrrp_notify_fifo",
            "notify_fifo_script",
            "vrrp_notify_fifo_script",
            "vrrp_startup_delay",
            "vrrp_garp_interval",
            "vrrp_gna_interval",
            "vrrp_garp_lower_prio_repeat",
            "vrrp_garp_lower_prio_delay",
        ],
    ),
    (
        "vrrp_script",
        &[
            "script", "interval", "timeout", "weight", "rise", "fall", "user",
        ],
    ),
    (
        "vrrp_sync_group",
        &[
            "group",
            "notify_master",
            "notify_backup",
            "notify_fault",
            "notify",
            "track_interface",
            "track_script",
            "track_file",
            "track_process",
        ],
    ),
    (
        "vrrp_instance",
        &[
            "state",
            "interface",
            "virtual_router_id",
            "priority",
            "advert_int",
            "version",
            "nopreempt",
            "preempt",
            "preempt_delay",
            "authentication",
            "virtual_ipaddress",
            "unicast_src_ip",
            "mcast_src_ip",
            "unicast_peer",
            "track_interface",
            "track_script",
            "track_file",
            "track_process",
            "notify_master",
            "notify_backup",
            "notify_fault",
            "notify_stop",
            "notify",
            "garp_master_delay",
            "garp_master_repeat",
            "garp_master_refresh",
            "garp_master_refresh_repeat",
            "garp_lower_prio_repeat",
            "garp_lower_prio_delay",
            "use_vmac",
            "vmac_xmit_base",
            "accept",
            "lvs_sync_daemon_interface",
            "lvs_sync_daemon_inteface",
        ],
    ),
    ("authentication", &["auth_type", "auth_pass"]),
    (
        "virtual_server",
        &[
            "lb_algo",
            "lvs_sched",
            "lb_kind",
            "lvs_method",
            "persistence_timeout",
            "persistence_granularity",
            "protocol",
            "delay_loop",
            "alpha",
            "quorum",
            "hysteresis",
            "sorry_server",
            "sorry_server_lvs_method",
            "nat_mask",
            "inhibit_on_failure",
            "retry",
            "delay_before_retry",
            "warmup",
            "connect_timeout",
            "virtualhost",
            "weight",
            "sh-port",
            "mh-port",
            "ip_family",
            "real_server",
        ],
    ),
    (
        "real_server",
        &[
            "weight",
            "uthreshold",
            "lthreshold",
            "inhibit_on_failure",
            "notify_up",
            "notify_down",
            "alpha",
            "delay_loop",
            "retry",
            "delay_before_retry",
            "warmup",
            "connect_timeout",
            "virtualhost",
            "lvs_method",
            "TCP_CHECK",
            "HTTP_GET",
            "MISC_CHECK",
            "SSL_GET",
            "DNS_CHECK",
            "UDP_CHECK",
            "PING_CHECK",
            "SMTP_CHECK",
            "FILE_CHECK",
        ],
    ),
    ("FILE_CHECK", &["track_file", "weight"]),
    (
        "TCP_CHECK",
        &[
            "connect_ip",
            "connect_port",
            "bindto",
            "connect_timeout",
            "retry",
            "nb_get_retry",
            "delay_before_retry",
            "warmup",
            "delay_loop",
            "alpha",
        ],
    ),
    (
        "HTTP_GET",
        &[
            "url",
            "virtualhost",
            "connect_ip",
            "connect_port",
            "bindto",
            "connect_timeout",
            "retry",
            "nb_get_retry",
            "delay_before_retry",
            "warmup",
            "delay_loop",
            "alpha",
            "http_protocol",
            "fast_recovery",
        ],
    ),
    (
        "SSL_GET",
        &[
            "url",
            "virtualhost",
            "enable_sni",
            "sni_name",
            "connect_ip",
            "connect_port",
            "bindto",
            "connect_timeout",
            "retry",
            "nb_get_retry",
            "delay_before_retry",
            "warmup",
            "delay_loop",
            "alpha",
            "http_protocol",
            "fast_recovery",
        ],
    ),
    (
        "DNS_CHECK",
        &[
            "type",
            "name",
            "connect_ip",
            "connect_port",
            "bindto",
            "connect_timeout",
            "retry",
            "delay_before_retry",
            "warmup",
            "delay_loop",
            "alpha",
        ],
    ),
    (
        "UDP_CHECK",
        &[
            "payload",
            "require_reply",
            "min_reply_length",
            "max_reply_length",
            "connect_ip",
            "connect_port",
            "bindto",
            "connect_timeout",
            "retry",
            "delay_before_retry",
            "warmup",
            "delay_loop",
            "alpha",
        ],
    ),
    (
        "PING_CHECK",
        &[
            "connect_ip",
            "bindto",
            "connect_timeout",
            "retry",
            "delay_before_retry",
            "warmup",
            "delay_loop",
            "alpha",
        ],
    ),
    (
        "SMTP_CHECK",
        &[
            "helo_name",
            "connect_ip",
            "connect_port",
            "bindto",
            "connect_timeout",
            "retry",
            "delay_before_retry",
            "warmup",
            "delay_loop",
            "alpha",
        ],
    ),
    // keepalived loads its `ca` but never verifies with it: the importer leaves it out.
    ("SSL", &["ca"]),
    (
        "url",
        &[
            "path",
            "status_code",
            "virtualhost",
            "digest",
            "regex",
            "regex_no_match",
        ],
    ),
    (
        "MISC_CHECK",
        &[
            "misc_path",
            "misc_timeout",
            "misc_dynamic",
            "user",
            "retry",
            "delay_before_retry",
            "warmup",
            "delay_loop",
            "alpha",
        ],
    ),
];

/// keepalived's other name for a keyword: `(canonical name, what the other name is)`.
pub fn alias(ctx: Ctx, word: &str) -> Option<(&'static str, &'static str)> {
    use Ctx::*;
    Some(match (ctx, word) {
        (GlobalDefs, "lvs_id") => ("router_id", "router_id's old name"),
        // keepalived reads both with one handler: the source address of the adverts.
        (Instance, "mcast_src_ip") => ("unicast_src_ip", "the same setting in keepalived"),
        // The seed's spelling, copied from keepalived samples of the 1.x days into countless
        // tutorials.
        (Instance, "lvs_sync_daemon_inteface") => (
            "lvs_sync_daemon_interface",
            "a misspelling of it that old keepalived samples spread",
        ),
        (Top, "vrrp_track_file") => ("track_file", "its deprecated synonym"),
        (VirtualServer, "lvs_sched") => ("lb_algo", "lb_algo's newer name"),
        (VirtualServer, "lvs_method") => ("lb_kind", "lb_kind's newer name"),
        // check_http.c: "nb_get_retry is deprecated - please use 'retry'".
        (TcpCheck | HttpGet | SslGet, "nb_get_retry") => ("retry", "retry's deprecated name"),
        _ => return None,
    })
}

const NOT_IMPLEMENTED: &str = "not implemented by lb-daemon";
const EMAIL: &str = "e-mail alerts are not implemented (notify hooks and global_defs.notify_fifo report state changes)";
const SNMP: &str = "SNMP and D-Bus are not implemented (lb-daemon exports Prometheus metrics: global_defs.metrics_address)";
const PROCESS: &str =
    "lb-daemon is one process: keepalived's per-process tuning has no counterpart";
const ROUTES: &str =
    "lb-daemon manages virtual addresses only, not routes, rules or static addresses";
const VMAC: &str =
    "use_vmac (a macvlan with the RFC's virtual MAC) is implemented; ipvlan and use_vmac_addr are not";
const TRACK_OTHER: &str =
    "track_bfd is not implemented (track_interface, track_script, track_file, track_process and track_virtual_server are)";
const OTHER_CHECKER: &str = "BFD_CHECK is not implemented";

/// Why lb-daemon does not support `keyword` (its canonical name) in `ctx`, if keepalived has
/// such a keyword there.
pub fn unsupported(ctx: Ctx, keyword: &str) -> Option<&'static str> {
    use Ctx::*;
    let reason = match ctx {
        Top => match keyword {
            "static_ipaddress" | "static_routes" | "static_rules" | "track_group" => ROUTES,
            "garp_group" => "per-interface gratuitous ARP pacing is not implemented",
            "bfd_instance" => TRACK_OTHER,
            "linkbeat_interfaces" | "interface_up_down_delays" | "linkbeat_use_polling" => {
                "lb-daemon follows links over netlink only, without debouncing"
            }
            "net_namespace" | "net_namespace_ipvs" | "namespace_with_ipsets" => {
                "run lb-daemon in the namespace itself (ip netns exec)"
            }
            "instance" | "use_pid_dir" | "child_wait_time" => PROCESS,
            _ => return None,
        },
        GlobalDefs => match keyword {
            "notification_email" | "notification_email_from" | "smtp_server"
            | "smtp_helo_name" | "smtp_connect_timeout" | "smtp_alert" | "smtp_alert_vrrp"
            | "smtp_alert_checker" | "no_email_faults" | "no_checker_emails" => EMAIL,
            "snmp_socket" | "enable_snmp_vrrp" | "enable_snmp_checker" | "enable_snmp_rfc"
            | "enable_snmp_rfcv2" | "enable_snmp_rfcv3" | "enable_snmp_keepalived"
            | "enable_traps" | "snmp_vs_stats_update_interval"
            | "snmp_rs_stats_update_interval" | "enable_dbus" | "dbus_service_name"
            | "dbus_no_interface_name" => SNMP,
            "lvs_notify_fifo" | "lvs_notify_fifo_script" => {
                "the checkers' FIFO lines (RS/VS UP/DOWN) are not implemented: notify_up/notify_down hooks report them"
            }
            "fifo_write_vrrp_states_on_reload" => NOT_IMPLEMENTED,
            "vrrp_mcast_group4" | "vrrp_mcast_group6" => {
                "lb-daemon uses the VRRP groups of the RFCs, 224.0.0.18 and ff02::12"
            }
            "process_names" | "process_name" | "vrrp_process_name" | "checker_process_name"
            | "bfd_process_name" | "max_auto_priority" | "min_auto_priority_delay"
            | "vrrp_priority" | "checker_priority" | "bfd_priority" | "vrrp_no_swap"
            | "checker_no_swap" | "bfd_no_swap" | "vrrp_cpu_affinity" | "checker_cpu_affinity"
            | "bfd_cpu_affinity" | "vrrp_rt_priority" | "checker_rt_priority"
            | "bfd_rt_priority" | "vrrp_rlimit_rttime" | "checker_rlimit_rttime"
            | "bfd_rlimit_rttime" | "vrrp_netlink_cmd_rcv_bufs"
            | "vrrp_netlink_cmd_rcv_bufs_force" | "vrrp_netlink_monitor_rcv_bufs"
            | "vrrp_netlink_monitor_rcv_bufs_force" | "lvs_netlink_cmd_rcv_bufs"
            | "lvs_netlink_cmd_rcv_bufs_force" | "lvs_netlink_monitor_rcv_bufs"
            | "lvs_netlink_monitor_rcv_bufs_force" | "process_monitor_rcv_bufs"
            | "process_monitor_rcv_bufs_force" | "vrrp_rx_bufs_policy"
            | "vrrp_rx_bufs_multiplier" | "umask" | "net_namespace" | "net_namespace_ipvs"
            | "namespace_with_ipsets" | "instance" | "use_pid_dir" | "child_wait_time"
            | "tmp_config_directory" | "config_save_dir" | "reload_check_config"
            | "reload_time_file" | "reload_repeat" | "reload_file" | "data_use_instance"
            | "state_file_location" | "stats_file_location" | "json_file_location"
            | "json_version" | "iproute_usr_dir" | "iproute_etc_dir" | "random_seed"
            | "include_check" | "use_symlink_paths" | "set_supplementary_groups" => PROCESS,
            "startup_script" | "startup_script_timeout" | "shutdown_script"
            | "shutdown_script_timeout" => "start-up and shut-down scripts are not implemented (use the systemd unit)",
            "default_interface" => ROUTES,
            "lvs_flush" | "lvs_flush_on_stop" => "lb-daemon owns its XDP maps: there is no IPVS table to flush",
            "vrrp_min_garp" | "vrrp_garp_extra_if" => {
                "only the garp_master_*, garp_lower_prio_* and garp/gna intervals are implemented"
            }
            "vrrp_down_timer_adverts" | "vrrp_lower_prio_no_advert"
            | "vrrp_higher_prio_send_advert" | "v3_checksum_as_v2" | "vrrp_check_unicast_src"
            | "vrrp_skip_check_adv_addr" | "vrrp_strict" | "vrrp_notify_priority_changes"
            | "vrrp_delay_after_boot" | "log_unknown_vrids"
            | "checker_log_all_failures" | "rs_init_notifies" | "linkbeat_use_polling"
            | "dynamic_interfaces" => NOT_IMPLEMENTED,
            "nftables" | "nftables_priority" | "nftables_counters" | "nftables_ifindex"
            | "nftables_ipvs" | "nftables_ipvs_priority" | "nftables_ipvs_start_fwmark"
            | "vrrp_iptables" | "vrrp_ipsets" => {
                "lb-daemon sets up no firewall rules (no_accept mode is not implemented; a \
                 virtual MAC interface's IGMP and MLD reports are kept off the virtual MAC \
                 without them)"
            }
            "vmac_prefix" | "vmac_addr_prefix" => VMAC,
            _ => return None,
        },
        VrrpScript => match keyword {
            "init_fail" => "a script starts as not yet failed in lb-daemon",
            _ => return None,
        },
        SyncGroup => match keyword {
            "notify_stop" => "lb-daemon's vrrp_sync_group has no notify_stop (each instance's notify_stop runs)",
            "notify_deleted" | "notify_priority_changes" | "global_tracking"
            | "sync_group_tracking_weight" => NOT_IMPLEMENTED,
            "smtp_alert" => EMAIL,
            "track_bfd" => TRACK_OTHER,
            _ => return None,
        },
        Instance => match keyword {
            "use_vmac_addr" | "use_ipvlan" => VMAC,
            "track_bfd" => TRACK_OTHER,
            "virtual_ipaddress_excluded" | "virtual_routes" | "virtual_rules"
            | "promote_secondaries" => ROUTES,
            "no_virtual_ipaddress" => "lb-daemon needs at least one virtual address per instance",
            "no_accept" => "no_accept needs firewall rules, which lb-daemon does not set up",
            "auth_hmac" => "only PASS authentication is implemented",
            "smtp_alert" => EMAIL,
            "mcast_dst_ip" => "lb-daemon uses the VRRP groups of the RFCs, 224.0.0.18 and ff02::12",
            "vrf" | "native_ipv6" | "dont_track_primary" | "track_src_ip"
            | "check_unicast_src" | "unicast_fault_no_peer" | "unicast_ttl"
            | "old_unicast_checksum" | "v3_checksum_as_v2" | "garp_extra_if" | "down_timer_adverts"
            | "timer_expired_backup" | "lower_prio_no_advert" | "higher_prio_send_advert"
            | "skip_check_adv_addr" | "strict_mode" | "debug" | "notify_master_rx_lower_pri"
            | "notify_priority_changes" | "notify_deleted" | "kernel_rx_buf_size"
            | "linkbeat_use_polling" => NOT_IMPLEMENTED,
            _ => return None,
        },
        Authentication => return None,
        VirtualServer => match keyword {
            "quorum_up" | "quorum_down" => {
                "quorum scripts are not implemented: a vrrp_instance can track_virtual_server the service's quorum instead"
            }
            "smtp_alert" => EMAIL,
            "snmp_name" => SNMP,
            "omega" | "ha_suspend" | "persistence_engine" | "hashed" | "ops" | "flag-1"
            | "flag-2" | "flag-3" | "sh-fallback" | "mh-fallback" | "sorry_server_inhibit" => {
                NOT_IMPLEMENTED
            }
            _ => return None,
        },
        RealServer => match keyword {
            "BFD_CHECK" => OTHER_CHECKER,
            "smtp_alert" => EMAIL,
            "snmp_name" => SNMP,
            _ => return None,
        },
        TcpCheck | HttpGet | SslGet | MiscCheck | DnsCheck | UdpCheck | PingCheck | SmtpCheck => match keyword {
            "bind_if" | "bind_port" | "fwmark" | "log_all_failures" => NOT_IMPLEMENTED,
            "connect_timeout" if ctx == MiscCheck => {
                "a MISC_CHECK has no connection: misc_timeout bounds its script"
            }
            "connect_port" if ctx == PingCheck => "an ICMP echo has no port",
            "enable_sni" | "sni_name" if ctx == HttpGet => {
                "an SSL_GET setting in an HTTP_GET, where keepalived ignores it"
            }
            "tls_compliant" => "not implemented: lb-daemon closes an SSL_GET's connection without close_notify",
            "host" if ctx == SmtpCheck => {
                "SMTP_CHECK's deprecated host blocks: write one SMTP_CHECK per host (connect_ip, connect_port, bindto)"
            }
            "http_protocol" if matches!(ctx, HttpGet | SslGet) => {
                "lb-daemon sends HTTP/1.1 requests with Connection: close (keepalived's http_protocol 1.1) only"
            }
            "fast_recovery" if matches!(ctx, HttpGet | SslGet) => {
                "lb-daemon always fetches every url of a check in one run (keepalived's fast_recovery on)"
            }
            _ => return None,
        },
        Url => match keyword {
            "regex_options" | "regex_stack" | "regex_min_offset" | "regex_max_offset" => {
                "PCRE options, stack and offsets are not implemented: regex matches the first 8 KiB of the body"
            }
            "tls_compliant" => "not implemented: lb-daemon closes an SSL_GET's connection without close_notify",
            _ => return None,
        },
        TrackFile | TrackProcess | FileCheck => return None,
        Ssl => match keyword {
            "certificate" | "key" | "password" => {
                "client certificates for SSL_GET are not implemented"
            }
            _ => return None,
        },
    };
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_reasons() {
        assert_eq!(
            alias(Ctx::Instance, "lvs_sync_daemon_inteface").map(|a| a.0),
            Some("lvs_sync_daemon_interface")
        );
        // IPVS's sync daemon is the [sync] section.
        assert_eq!(
            unsupported(Ctx::Instance, "lvs_sync_daemon_interface"),
            None
        );
        assert_eq!(unsupported(Ctx::GlobalDefs, "lvs_sync_daemon"), None);
        assert_eq!(
            alias(Ctx::TcpCheck, "nb_get_retry").map(|a| a.0),
            Some("retry")
        );
        // MISC_CHECK never took nb_get_retry.
        assert_eq!(alias(Ctx::MiscCheck, "nb_get_retry"), None);
        assert!(unsupported(Ctx::GlobalDefs, "notification_email").is_some());
        assert!(unsupported(Ctx::GlobalDefs, "router_id").is_none());
        assert!(unsupported(Ctx::Url, "digest").is_none());
        assert!(unsupported(Ctx::Url, "regex_min_offset").is_some());
        assert!(unsupported(Ctx::TcpCheck, "http_protocol").is_none());
    }
}

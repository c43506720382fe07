use super::*;

fn with_listen(listen: &str) -> SyslogConfig {
    SyslogConfig { listen: listen.to_string(), ..SyslogConfig::default() }
}

#[test]
fn defaults_are_off_and_round_trip_through_toml() {
    let c = SyslogConfig::default();
    assert_eq!(c.listeners().unwrap(), vec![]);
    assert_eq!(c.check(ServerSide::default()).unwrap(), vec![]);
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("max_message_bytes = \"64.0 KiB\""), "{text}");
    assert!(text.contains("batch_max_delay = \"200ms\""), "{text}");
    assert_eq!(toml::from_str::<SyslogConfig>(&text).unwrap(), c);
    assert!(toml::from_str::<SyslogConfig>("lisen = \"x\"").unwrap_err().to_string().contains("unknown field"));
}

#[test]
fn listen_takes_a_comma_separated_list() {
    let c = with_listen(" tcp://127.0.0.1:514, udp://127.0.0.1:514 ,TLS://[::1]:6514,");
    assert_eq!(
        c.listeners().unwrap(),
        vec![
            Listen { transport: Transport::Tcp, addr: "127.0.0.1:514".parse().unwrap() },
            Listen { transport: Transport::Udp, addr: "127.0.0.1:514".parse().unwrap() },
            Listen { transport: Transport::Tls, addr: "[::1]:6514".parse().unwrap() },
        ]
    );
    for bad in ["127.0.0.1:514", "syslog://127.0.0.1:514", "tcp://localhost:514", "udp://127.0.0.1"] {
        let e = with_listen(bad).listeners().unwrap_err().to_string();
        assert!(e.starts_with("syslog.listen:") && e.contains(bad), "{e}");
    }
}

#[test]
fn tls_needs_the_servers_certificate() {
    let c = with_listen("tls://127.0.0.1:6514");
    let e = c.check(ServerSide::default()).unwrap_err().to_string();
    assert_eq!(
        e,
        "syslog.listen = tls://127.0.0.1:6514 needs server.tls_cert_file and server.tls_key_file (its certificate)"
    );
    assert!(c.check(ServerSide { tls: true, ..ServerSide::default() }).is_ok());
}

#[test]
fn beyond_loopback_needs_allow_unauthenticated_or_client_certificates() {
    let c = with_listen("udp://127.0.0.1:514,tcp://0.0.0.0:514");
    let e = c.check(ServerSide::default()).unwrap_err().to_string();
    assert!(e.starts_with("syslog.listen = tcp://0.0.0.0:514 is beyond loopback"), "{e}");
    assert!(e.contains("server.allow_unauthenticated = true"), "{e}");
    assert!(c.check(ServerSide { allow_unauthenticated: true, ..ServerSide::default() }).is_ok());
    // Mutual TLS authenticates the sender; plain TCP beside it still does not.
    let tls = with_listen("tls://0.0.0.0:6514");
    assert!(tls.check(ServerSide { tls: true, client_ca: true, ..ServerSide::default() }).is_ok());
    assert!(tls.check(ServerSide { tls: true, ..ServerSide::default() }).is_err());
    let both = with_listen("tls://0.0.0.0:6514,tcp://[::]:514");
    let e = both.check(ServerSide { tls: true, client_ca: true, ..ServerSide::default() }).unwrap_err();
    assert!(e.to_string().starts_with("syslog.listen = tcp://[::]:514 is beyond loopback"), "{e}");
}

#[test]
fn values_are_checked() {
    let check = |c: SyslogConfig| c.check(ServerSide::default()).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(
        check(SyslogConfig { tenant: "a/b".into(), ..SyslogConfig::default() }).unwrap_err().split(':').next(),
        Some("syslog.tenant")
    );
    let e = check(SyslogConfig { max_message_bytes: ByteSize::b(10), ..SyslogConfig::default() }).unwrap_err();
    assert_eq!(e, "syslog.max_message_bytes = 10 B: must be between 64 B and 16 MiB");
    assert!(check(SyslogConfig { batch_max_lines: 0, ..SyslogConfig::default() }).is_err());
    assert!(check(SyslogConfig { max_connections: 0, ..SyslogConfig::default() }).is_err());
    assert!(check(SyslogConfig { idle_timeout: Duration::from_millis(10), ..SyslogConfig::default() }).is_err());
    let offset = |s: &str| SyslogConfig { bsd_utc_offset: s.into(), ..SyslogConfig::default() }.bsd_offset_secs();
    assert_eq!(offset("+00:00").unwrap(), 0);
    assert_eq!(offset("Z").unwrap(), 0);
    assert_eq!(offset("+02:00").unwrap(), 7200);
    assert_eq!(offset("-05:30").unwrap(), -19_800);
    for bad in ["", "2", "+2", "+02", "+0200", "+19:00", "+01:60", "UTC"] {
        let e = offset(bad).unwrap_err().to_string();
        assert!(e.starts_with("syslog.bsd_utc_offset = "), "{bad}: {e}");
    }
}

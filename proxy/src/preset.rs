//! `PROXY_PRESET`: the timers of real load balancers, one table row each, with where the numbers come
//! from. Checked against the vendors' documentation and, for nginx and HAProxy, Debian 12's packages
//! (nginx 1.22, HAProxy 2.6). A timer a vendor does not document is off here, and says so in its note.
//! `send` (a write to a client that stopped reading) is also a balancer's inactivity timer where its
//! documentation says that timer counts data the balancer cannot send.

use std::time::Duration;

/// The seven timers; `None` is off (the balancer has no such timer, or documents none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerSet {
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub idle: Option<Duration>,
    pub max_duration: Option<Duration>,
    pub header: Option<Duration>,
    pub keepalive: Option<Duration>,
    pub send: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    Nginx,
    Haproxy,
    Envoy,
    AwsAlb,
    Heroku,
    Cloudflare,
    Gcp,
    /// Not a real balancer: the lab's own short timers, so that every failure shows within seconds.
    Demo,
}

const fn secs(seconds: u64) -> Option<Duration> {
    Some(Duration::from_secs(seconds))
}

impl Preset {
    pub const ALL: [Preset; 8] = [
        Preset::Nginx,
        Preset::Haproxy,
        Preset::Envoy,
        Preset::AwsAlb,
        Preset::Heroku,
        Preset::Cloudflare,
        Preset::Gcp,
        Preset::Demo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Nginx => "nginx",
            Preset::Haproxy => "haproxy",
            Preset::Envoy => "envoy",
            Preset::AwsAlb => "aws-alb",
            Preset::Heroku => "heroku",
            Preset::Cloudflare => "cloudflare",
            Preset::Gcp => "gcp",
            Preset::Demo => "demo",
        }
    }

    pub fn timers(self) -> TimerSet {
        match self {
            // proxy_connect_timeout, proxy_read_timeout (header wait and between reads, never a
            // total), client_header_timeout, keepalive_timeout, send_timeout (between two writes
            // to the client): all nginx's built-in defaults.
            Preset::Nginx => TimerSet {
                connect: secs(60),
                first_byte: secs(60),
                idle: secs(60),
                max_duration: None,
                header: secs(60),
                keepalive: secs(75),
                send: secs(60),
            },
            // Debian's /etc/haproxy/haproxy.cfg: timeout connect 5000, client 50000, server 50000;
            // http-request and http-keep-alive are unset, so both fall back to timeout client, which
            // also applies "when the client is expected to acknowledge or send data": the send timer.
            Preset::Haproxy => TimerSet {
                connect: secs(5),
                first_byte: secs(50),
                idle: secs(50),
                max_duration: None,
                header: secs(50),
                keepalive: secs(50),
                send: secs(50),
            },
            // Cluster connect_timeout 5 s; route timeout 15 s, which covers the whole response
            // (headers and body); stream_idle_timeout 5 min, which counts "no upstream or downstream
            // activity", so a client that stopped reading too; request_headers_timeout disabled;
            // HCM idle_timeout 1 h.
            Preset::Envoy => TimerSet {
                connect: secs(5),
                first_byte: None,
                idle: secs(300),
                max_duration: secs(15),
                header: None,
                keepalive: secs(3600),
                send: secs(300),
            },
            // One 60 s idle timeout for client and target connections alike ("no data has been sent
            // or received", so a client that stopped reading too); 10 s to connect to a target.
            // client_keep_alive (3600 s) is a connection age, not an idle timer.
            Preset::AwsAlb => TimerSet {
                connect: secs(10),
                first_byte: secs(60),
                idle: secs(60),
                max_duration: None,
                header: secs(60),
                keepalive: secs(60),
                send: secs(60),
            },
            // H19 after 5 s connecting to a dyno; H12 when no response starts within 30 s; then a
            // rolling 55 s window (H15 from the dyno, H28 from the client) that only bytes moving
            // reset, so a client that stopped reading is cut at 55 s too. Client keep-alive: not
            // documented.
            Preset::Heroku => TimerSet {
                connect: secs(5),
                first_byte: secs(30),
                idle: secs(55),
                max_duration: None,
                header: secs(55),
                keepalive: None,
                send: secs(55),
            },
            // 522 after 19 s connecting; 524 when 125 s pass between two reads from the upstream
            // (Proxy Read Timeout); HTTP/1.1 keep-alive 400 s. Header and client send timeouts: not
            // documented (its Proxy Write Timeout is towards the origin).
            Preset::Cloudflare => TimerSet {
                connect: secs(19),
                first_byte: secs(125),
                idle: secs(125),
                max_duration: None,
                header: None,
                keepalive: secs(400),
                send: None,
            },
            // Backend service timeout 30 s: from the first request byte to the last response
            // byte, data or not; client HTTP keep-alive 610 s. Connect, header and client send
            // timeouts: not documented.
            Preset::Gcp => TimerSet {
                connect: None,
                first_byte: None,
                idle: None,
                max_duration: secs(30),
                header: None,
                keepalive: secs(610),
                send: None,
            },
            // `keepalive-lab demo` and `docker compose up`: an idle cut at 5 s, a 504 at 3 s, and a
            // connect timer shorter than the first-byte one (which includes connecting) so that an
            // unreachable upstream is reported as such.
            Preset::Demo => TimerSet {
                connect: secs(2),
                first_byte: secs(3),
                idle: secs(5),
                max_duration: None,
                header: secs(10),
                keepalive: secs(60),
                send: secs(10),
            },
        }
    }

    /// Where the numbers come from, for `--help`, logs and the README.
    pub fn source(self) -> &'static str {
        match self {
            Preset::Nginx => "https://nginx.org/en/docs/http/ngx_http_proxy_module.html, https://nginx.org/en/docs/http/ngx_http_core_module.html",
            Preset::Haproxy => "Debian 12 haproxy 2.6 /etc/haproxy/haproxy.cfg; https://docs.haproxy.org/2.6/configuration.html#4.2",
            Preset::Envoy => "https://www.envoyproxy.io/docs/envoy/latest/faq/configuration/timeouts",
            Preset::AwsAlb => "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/edit-load-balancer-attributes.html, https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-troubleshooting.html",
            Preset::Heroku => "https://devcenter.heroku.com/articles/request-timeout, https://devcenter.heroku.com/articles/error-codes",
            Preset::Cloudflare => "https://developers.cloudflare.com/fundamentals/reference/connection-limits/",
            Preset::Gcp => "https://cloud.google.com/load-balancing/docs/https#timeout-bes, https://cloud.google.com/load-balancing/docs/https/request-distribution",
            Preset::Demo => "keepalive-lab's own demo timers (README, Presets)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_to_their_table_values() {
        assert_eq!(Preset::Nginx.timers().idle, secs(60));
        assert_eq!(Preset::Nginx.timers().keepalive, secs(75));
        assert_eq!(Preset::Haproxy.timers().connect, secs(5));
        assert_eq!(Preset::Haproxy.timers().idle, secs(50));
        assert_eq!(Preset::Envoy.timers().max_duration, secs(15));
        assert_eq!(Preset::Envoy.timers().idle, secs(300));
        assert_eq!(Preset::AwsAlb.timers().idle, secs(60));
        assert_eq!(Preset::Heroku.timers().first_byte, secs(30));
        assert_eq!(Preset::Heroku.timers().idle, secs(55));
        assert_eq!(Preset::Cloudflare.timers().idle, secs(125));
        assert_eq!(Preset::Gcp.timers().max_duration, secs(30));
        assert_eq!(Preset::Gcp.timers().idle, None);
        assert_eq!(Preset::Nginx.timers().send, secs(60));
        assert_eq!(Preset::Haproxy.timers().send, secs(50));
        assert_eq!(Preset::Cloudflare.timers().send, None);
    }

    #[test]
    fn names_round_trip_through_the_cli_parser() {
        use clap::ValueEnum;
        for preset in Preset::ALL {
            assert_eq!(Preset::from_str(preset.name(), true), Ok(preset));
        }
    }
}

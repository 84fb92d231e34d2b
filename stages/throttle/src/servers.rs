//! Where the buckets live, read from one `redis.url`: one Redis (`redis://`), a Redis Cluster
//! (`redis+cluster://host1:port,host2:port`) or the master a set of Sentinels names
//! (`redis+sentinel://host1:26379,host2:26379/<master>`), each with TLS (`rediss…`). One Redis
//! is a single point of failure for every throttled rule; the other two are how Redis itself
//! removes it. Parsing is pure and never repeats the URL in an error (it may hold a password).

use std::fmt;

/// Default port of a Redis node (cluster seeds without a port).
const REDIS_PORT: u16 = 6379;
/// Default port of a Sentinel.
const SENTINEL_PORT: u16 = 26379;
/// Most hosts one URL may list.
const MAX_HOSTS: usize = 64;

/// What `redis.url` names.
#[derive(Clone, PartialEq, Eq)]
pub enum Servers {
    /// One Redis: the URL as the `redis` crate reads it.
    Single,
    /// A Redis Cluster reached through any of `nodes` (the rest are discovered).
    Cluster {
        tls: bool,
        /// `user:password` as written in the URL (still percent-encoded), if any.
        userinfo: Option<String>,
        nodes: Vec<(String, u16)>,
    },
    /// The master that `sentinels` name `master`.
    Sentinel {
        tls: bool,
        userinfo: Option<String>,
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
    },
}

impl fmt::Debug for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the userinfo: it holds the password.
        f.write_str(&self.describe())
    }
}

impl Servers {
    /// A line for `whale status` and logs: the mode and the hosts, never a password.
    pub fn describe(&self) -> String {
        let hosts = |h: &[(String, u16)]| {
            h.iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Servers::Single => "one server".into(),
            Servers::Cluster { tls, nodes, .. } => {
                format!("cluster via {}{}", hosts(nodes), tls_note(*tls))
            }
            Servers::Sentinel {
                tls,
                sentinels,
                master,
                ..
            } => format!(
                "sentinel master {master:?} via {}{}",
                hosts(sentinels),
                tls_note(*tls)
            ),
        }
    }

    /// Whether the URL asks for TLS (`rediss://`, `rediss+cluster://`, `rediss+sentinel://`).
    pub fn tls(url: &str) -> bool {
        url.starts_with("rediss://") || url.starts_with("rediss+")
    }
}

fn tls_note(tls: bool) -> &'static str {
    if tls {
        " (TLS)"
    } else {
        ""
    }
}

/// Reads `redis.url`. The error says what is wrong, never what the URL holds.
pub fn parse(url: &str) -> Result<Servers, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("no scheme".into());
    };
    let (tls, kind) = match scheme {
        "redis" | "rediss" | "unix" | "redis+unix" => return Ok(Servers::Single),
        "redis+cluster" => (false, "cluster"),
        "rediss+cluster" => (true, "cluster"),
        "redis+sentinel" => (false, "sentinel"),
        "rediss+sentinel" => (true, "sentinel"),
        _ => return Err("unknown scheme".into()),
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(at) => (
            Some(authority[..at].to_owned()).filter(|u| !u.is_empty()),
            &authority[at + 1..],
        ),
        None => (None, authority),
    };
    let default_port = if kind == "cluster" {
        REDIS_PORT
    } else {
        SENTINEL_PORT
    };
    let hosts = hostlist
        .split(',')
        .map(|h| host_port(h.trim(), default_port))
        .collect::<Result<Vec<_>, _>>()?;
    if hosts.len() > MAX_HOSTS {
        return Err(format!("more than {MAX_HOSTS} hosts"));
    }
    if path.contains(['?', '#']) {
        return Err(format!("{scheme}:// takes no query or fragment"));
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if kind == "cluster" {
        if !segments.is_empty() {
            return Err("a cluster URL has no path (a Redis Cluster has only database 0)".into());
        }
        return Ok(Servers::Cluster {
            tls,
            userinfo,
            nodes: hosts,
        });
    }
    let (master, db) = match segments.as_slice() {
        [m] => (*m, 0),
        [m, db] => (
            *m,
            db.parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or("the database after the master name is not a number")?,
        ),
        [] => {
            return Err(
                "no master name: redis+sentinel://host1:26379,host2:26379/<master-name>".into(),
            )
        }
        _ => return Err("too many path segments: expected /<master-name>[/<db>]".into()),
    };
    Ok(Servers::Sentinel {
        tls,
        userinfo,
        sentinels: hosts,
        master: master.to_owned(),
        db,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in an IPv6 host")?;
        (h, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("an empty host in the host list".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or("a port is not a number from 1 to 65535")?,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_cluster_and_sentinel_forms() {
        assert_eq!(parse("redis://127.0.0.1:6379").unwrap(), Servers::Single);
        assert_eq!(parse("rediss://u:p@h:1/2").unwrap(), Servers::Single);
        assert_eq!(
            parse("redis+cluster://u:s3cret@a:7000, b ,[::1]:7002").unwrap(),
            Servers::Cluster {
                tls: false,
                userinfo: Some("u:s3cret".into()),
                nodes: vec![("a".into(), 7000), ("b".into(), 6379), ("::1".into(), 7002)],
            }
        );
        assert_eq!(
            parse("rediss+sentinel://:pw@s1,s2:26380/mymaster/3").unwrap(),
            Servers::Sentinel {
                tls: true,
                userinfo: Some(":pw".into()),
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26380)],
                master: "mymaster".into(),
                db: 3,
            }
        );
    }

    #[test]
    fn errors_say_what_never_the_password() {
        for (url, says) in [
            ("redis+sentinel://u:s3cret@s1:26379", "no master name"),
            ("redis+sentinel://u:s3cret@s1:26379/m/x", "not a number"),
            ("redis+sentinel://u:s3cret@s1:26379/m/1/2", "too many"),
            ("redis+cluster://u:s3cret@a:7000/0", "no path"),
            ("redis+cluster://u:s3cret@a:99999", "port"),
            ("redis+cluster://u:s3cret@a,,b", "empty host"),
            ("redis+cluster://u:s3cret@", "empty host"),
            ("redis+cluster://u:s3cret@a?x=1", "no query"),
            ("http://u:s3cret@a", "unknown scheme"),
            ("u:s3cret@a", "no scheme"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
        let d = format!("{:?}", parse("redis+sentinel://u:s3cret@s1/m").unwrap());
        assert_eq!(d, "sentinel master \"m\" via s1:26379");
    }
}

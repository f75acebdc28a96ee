//! Hosts on one machine: network namespaces joined by veth pairs to a bridge in the root
//! namespace, so that a process (a Kafka node) can be cut off from every peer and client by
//! taking its link down, and healed by bringing it up.
//!
//! Every address is on the bridge's own subnet ([`SUBNET`]; the bridge is `.1`, host `i` is
//! `.(10 + i)`) and no route leaves it: nothing here talks to anything the test did not
//! create. Every name starts with [`PREFIX`] and the creating process id; [`Net::create`]
//! first removes what a previous run that is no longer alive left behind (a crashed or
//! SIGKILLed test), and [`Drop`] removes this run's namespaces and bridge on every other exit
//! path. Needs root and `ip` (iproute2): a missing one is a loud failure.

use std::process::Command;

/// Prefix of every namespace and link this module creates (`t14` as in issue 14; link names
/// have at most 15 bytes).
pub const PREFIX: &str = "t14";

/// The test network: `10.77.0.0/24`, on the bridge only.
pub const SUBNET: &str = "10.77.0";

/// Runs `ip ARGS`; panics with its stderr when it fails.
fn ip(args: &[&str]) {
    ip_output(args);
}

/// Runs `ip ARGS` and ignores failure (cleanup of what may already be gone).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// Runs `ip ARGS` and returns its stdout; panics with its stderr when it fails.
fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run `ip` (install iproute2; the cluster run needs it and root)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid a name of ours carries (`t14-PID-...` namespaces, `t14bPID` bridges), if any.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest
        .trim_start_matches(['-', 'b'])
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Removes namespaces and bridges left by runs whose process is gone; panics when a live
/// process owns some (two runs cannot share [`SUBNET`]).
pub fn clean_stale() {
    let me = std::process::id();
    for line in ip_output(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = owner_pid(name) {
            if pid != me && pid_alive(pid) {
                panic!(
                    "network namespace {name} belongs to a running process {pid}: another \
                     cluster run holds {SUBNET}.0/24; wait for it to finish"
                );
            }
            if pid != me {
                // Processes a killed run left inside (its brokers): theirs, by pid.
                for p in ip_output(&["netns", "pids", name]).split_whitespace() {
                    if let Ok(p) = p.parse::<i32>() {
                        let _ = crate::process::unsafe_kill(p, libc::SIGCONT);
                        let _ = crate::process::unsafe_kill(p, libc::SIGKILL);
                    }
                }
                ip_quiet(&["netns", "del", name]);
            }
        }
    }
    for line in ip_output(&["-o", "link", "show", "type", "bridge"]).lines() {
        // "7: t14b1234: <...>"
        let name = line
            .split(':')
            .nth(1)
            .map(|s| s.trim().split('@').next().unwrap_or(""))
            .unwrap_or("");
        if let Some(pid) = owner_pid(name) {
            if pid != me && !pid_alive(pid) {
                ip_quiet(&["link", "del", name]);
            }
        }
    }
}

/// One host: a namespace and the root side of its veth pair (on the bridge).
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: String,
    pub addr: String,
    link: String,
}

/// A bridge with `n` hosts on it. Removed on drop.
pub struct Net {
    bridge: String,
    pub hosts: Vec<Host>,
}

impl Net {
    /// Creates the bridge (`SUBNET.1/24`) and `n` namespaces, host `i` at `SUBNET.(11 + i)`.
    pub fn create(n: usize) -> Net {
        assert!((1..=50).contains(&n), "between 1 and 50 hosts, not {n}");
        clean_stale();
        let pid = std::process::id();
        let bridge = format!("{PREFIX}b{pid}");
        let mut net = Net {
            bridge: bridge.clone(),
            hosts: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..n {
            let netns = format!("{PREFIX}-{pid}-{i}");
            let link = format!("{PREFIX}v{pid}n{i}");
            let peer = format!("{PREFIX}p{pid}n{i}");
            let addr = format!("{SUBNET}.{}", 11 + i);
            ip(&["netns", "add", &netns]);
            // Pushed before the links exist, so that a panic below still removes it.
            net.hosts.push(Host {
                netns: netns.clone(),
                addr: addr.clone(),
                link: link.clone(),
            });
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", &netns]);
            ip(&["link", "set", &link, "master", &bridge]);
            ip(&["link", "set", &link, "up"]);
            ip(&["-n", &netns, "link", "set", &peer, "name", "eth0"]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// The root namespace's address on the bridge (`SUBNET.1`): what listens there is reached
    /// by every host not cut off.
    pub fn bridge_addr(&self) -> String {
        format!("{SUBNET}.1")
    }

    /// Cuts host `i` off: its link to the bridge goes down, so it reaches neither the other
    /// hosts nor anything in the root namespace, and nothing reaches it.
    pub fn isolate(&self, i: usize) {
        ip(&["link", "set", &self.hosts[i].link, "down"]);
    }

    /// Brings host `i`'s link up again.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.hosts[i].link, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and with it the pair.
        for h in &self.hosts {
            ip_quiet(&["netns", "del", &h.netns]);
            ip_quiet(&["link", "del", &h.link]);
        }
        ip_quiet(&["link", "del", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pids_are_read_from_our_names_only() {
        assert_eq!(owner_pid("t14-1234-0"), Some(1234));
        assert_eq!(owner_pid("t14b99"), Some(99));
        assert_eq!(owner_pid("t14-x"), None);
        assert_eq!(owner_pid("docker0"), None);
        assert_eq!(owner_pid("eth0"), None);
    }
}

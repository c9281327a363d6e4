//! A small network of namespaces for fault tests in the real kernel: one namespace per node,
//! each with a veth (`eth0`, 10.77.0.N/24) whose other end (`pN`) is a port of a bridge in a
//! namespace of its own. Everything lives inside namespaces named after this process, so
//! dropping the `Net` (or, after a crash, the next run's sweep) removes every link, rule and
//! qdisc with them, and the root namespace is never touched.
//!
//! Faults are applied on the bridge's side, where every packet between nodes passes:
//! nftables rules in the bridge namespace (random loss, duplication, partitions, blackholes)
//! and qdiscs on its ports.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

const PREFIX: &str = "rwnet";

/// Runs `cmd args`; panics with its stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) {
    if let Err(e) = try_run(cmd, args, None) {
        panic!("{e}");
    }
}

/// Runs `cmd args`, feeding `stdin` when given.
pub fn try_run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("cannot run {cmd}: {e}"))?;
    let mut pipe = child.stdin.take().expect("piped");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{cmd}: {e}"))?;
    }
    drop(pipe);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why this machine cannot run namespace tests (no `ip` or `nft`, or no permission), if so.
pub fn unavailable() -> Option<String> {
    let probe = format!("{PREFIX}probe{}", std::process::id());
    if let Err(e) = try_run("ip", &["netns", "add", &probe], None) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let nft = try_run(
        "ip",
        &["netns", "exec", &probe, "nft", "list", "ruleset"],
        None,
    );
    let _ = try_run("ip", &["netns", "del", &probe], None);
    nft.err()
        .map(|e| format!("nftables unusable (xtask installs `nftables`): {e}"))
}

pub struct Net {
    prefix: String,
    nodes: usize,
}

impl Net {
    /// A bridge and `nodes` namespaces joined to it, after removing what crashed runs left.
    pub fn new(nodes: usize) -> Net {
        sweep_stale();
        let net = Net {
            prefix: format!("{PREFIX}{}-", std::process::id()),
            nodes,
        };
        let br = net.bridge_ns();
        run("ip", &["netns", "add", &br]);
        net.ip_in(&br, &["link", "add", "br0", "type", "bridge"]);
        net.ip_in(&br, &["link", "set", "br0", "up"]);
        for i in 0..nodes {
            let ns = net.ns(i);
            let port = port(i);
            run("ip", &["netns", "add", &ns]);
            run(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &br,
                ],
            );
            net.ip_in(&br, &["link", "set", &port, "master", "br0"]);
            net.ip_in(&br, &["link", "set", &port, "up"]);
            let cidr = format!("{}/24", node_ip(i));
            net.ip_in(&ns, &["addr", "add", &cidr, "dev", "eth0"]);
            // One segment per packet: the loss and duplication rules then act on wire-sized
            // packets, as on a real link, not on 64 KiB GSO batches.
            net.ip_in(&ns, &["link", "set", "eth0", "gso_max_segs", "1"]);
            net.ip_in(&ns, &["link", "set", "eth0", "up"]);
            net.ip_in(&ns, &["link", "set", "lo", "up"]);
        }
        net
    }

    pub fn ns(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ip_in(&self, ns: &str, args: &[&str]) {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs `f` on a thread that lives in `node`'s namespace; the threads it starts (a
    /// messenger's workers) inherit it, and so do the sockets they open.
    pub fn within<T: Send>(&self, node: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns(node));
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the thread in the namespace panicked")
        })
    }

    /// Replaces the fault rules in the bridge namespace with `rules` (nft statements for the
    /// bridge's forward hook, one a line; empty: no faults) and `dup_ports` duplicating
    /// `dup_per_mille` of the packets that enter from those ports.
    pub fn set_faults(&self, rules: &[String], dup_ports: &[usize], dup_per_mille: u32) {
        let br = self.bridge_ns();
        // Deleting a table that is not there fails: create-then-delete is idempotent.
        let mut script = String::from(
            "table bridge faults {}\ndelete table bridge faults\n\
             table netdev copies {}\ndelete table netdev copies\n\
             table bridge faults {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n",
        );
        for r in rules {
            script += &format!("  {r}\n");
        }
        script += " }\n}\n";
        if !dup_ports.is_empty() {
            script += "table netdev copies {\n";
            for p in dup_ports {
                // A copy sent out of the bridge device is forwarded like the original.
                script += &format!(
                    " chain {port} {{ type filter hook ingress device \"{port}\" priority 0; \
                     numgen random mod 1000 < {dup_per_mille} counter dup to \"br0\"; }}\n",
                    port = port(*p)
                );
            }
            script += "}\n";
        }
        if let Err(e) = try_run(
            "ip",
            &["netns", "exec", &br, "nft", "-f", "-"],
            Some(&script),
        ) {
            panic!("{e}\n{script}");
        }
    }

    /// Removes every fault: rules, qdiscs on the ports, links down.
    pub fn heal_all(&self) {
        let br = self.bridge_ns();
        let script = "table bridge faults {}\ndelete table bridge faults\n\
                      table netdev copies {}\ndelete table netdev copies\n";
        let _ = try_run(
            "ip",
            &["netns", "exec", &br, "nft", "-f", "-"],
            Some(script),
        );
        for i in 0..self.nodes {
            let _ = self.tc(&["qdisc", "del", "dev", &port(i), "root"]);
            let _ = try_run("ip", &["-n", &br, "link", "set", &port(i), "up"], None);
        }
    }

    /// Sets the bridge's port for `node` down or up: the node's link loses its carrier.
    pub fn set_link(&self, node: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ip_in(&self.bridge_ns(), &["link", "set", &port(node), state]);
    }

    /// A slow lane on the bridge's port toward `node`: the packets whose IP ID ends in two
    /// zero bits (a quarter of them; Linux numbers a TCP socket's packets in sequence) go
    /// through an HTB class limited to `rate`, the rest pass at once. Those packets queue
    /// behind each other (delay, varying with the load: jitter) while the packets sent after
    /// them overtake them (reordering). Real qdiscs, for kernels without `sch_netem`.
    pub fn slow_lane(&self, node: usize, rate: &str) -> Result<(), String> {
        let dev = port(node);
        let steps: [&[&str]; 4] = [
            &[
                "qdisc", "add", "dev", &dev, "root", "handle", "1:", "htb", "default", "10",
            ],
            &[
                "class", "add", "dev", &dev, "parent", "1:", "classid", "1:10", "htb", "rate",
                "10gbit",
            ],
            &[
                "class", "add", "dev", &dev, "parent", "1:", "classid", "1:20", "htb", "rate",
                rate, "ceil", rate,
            ],
            &[
                "filter", "add", "dev", &dev, "parent", "1:", "protocol", "ip", "u32", "match",
                "u16", "0", "0x0003", "at", "4", "flowid", "1:20",
            ],
        ];
        steps.iter().try_for_each(|args| self.tc(args))
    }

    /// Segments that arrived out of order at the nodes' TCP stacks (`TCPOFOQueue`), summed.
    pub fn out_of_order_segments(&self) -> u64 {
        (0..self.nodes)
            .map(|i| {
                let out = Command::new("ip")
                    .args(["netns", "exec", &self.ns(i), "cat", "/proc/net/netstat"])
                    .output()
                    .expect("ip netns exec runs");
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let lines: Vec<&str> = text.lines().collect();
                lines
                    .chunks(2)
                    .filter(|pair| pair.len() == 2 && pair[0].starts_with("TcpExt:"))
                    .find_map(|pair| {
                        let names = pair[0].split_whitespace();
                        let values = pair[1].split_whitespace();
                        names
                            .zip(values)
                            .find(|(n, _)| *n == "TCPOFOQueue")
                            .and_then(|(_, v)| v.parse::<u64>().ok())
                    })
                    .unwrap_or(0)
            })
            .sum()
    }

    /// `tc ARGS` in the bridge namespace.
    pub fn tc(&self, args: &[&str]) -> Result<(), String> {
        let br = self.bridge_ns();
        let mut all = vec!["-n", br.as_str()];
        all.extend_from_slice(args);
        try_run("tc", &all, None)
    }

    /// Packets the current rules dropped or duplicated, from nft's counters.
    pub fn fault_counters(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.bridge_ns(), "nft", "list", "ruleset"])
            .output()
            .expect("nft runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("counter"))
            .map(|l| l.trim().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, their peers, the bridge, the rules.
        for i in 0..self.nodes {
            let _ = try_run("ip", &["netns", "del", &self.ns(i)], None);
        }
        let _ = try_run("ip", &["netns", "del", &self.bridge_ns()], None);
    }
}

/// The bridge's port for `node`.
pub fn port(node: usize) -> String {
    format!("p{node}")
}

pub fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, u8::try_from(node + 1).expect("under 255 nodes"))
}

/// Removes the namespaces of earlier runs whose process is gone (a crash skips `Drop`).
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = try_run("ip", &["netns", "del", &name], None);
        }
    }
}

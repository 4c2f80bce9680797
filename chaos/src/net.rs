//! Network faults for the runner (root only): each broker in its own network namespace, all of
//! them joined by a bridge in the runner's namespace (where the producers and consumers run),
//! and faults as nftables rules on each namespace's **input** hook (output-hook drops make
//! `sendto` fail with EPERM instead of losing the packet; see `../shared/NOTES.md`).
//!
//! A partition drops every packet between brokers on different sides; the runner's own
//! address is never cut, so clients still reach an isolated leader (which must then not
//! acknowledge anything). Loss drops a random share of every packet a broker receives.
//! Everything is removed again when the [`Net`] is dropped.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The nftables table the faults live in, in every broker namespace.
const TABLE: &str = "spate_chaos";

/// Whether network faults can run here: root, and the `nft` tool installed.
pub fn available() -> Result<(), String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Err("network faults need root (network namespaces and nftables)".into());
    }
    match Command::new("nft").arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => Err("network faults need the nft tool: apt-get install nftables".into()),
    }
}

/// One namespace per broker, a bridge, and the veth pairs between them.
pub struct Net {
    bridge: String,
    /// The third octet of the run's 10.77.X.0/24 network.
    subnet: u8,
    namespaces: Vec<String>,
    veths: Vec<String>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl Net {
    /// Creates the network for `brokers` brokers. Names and the subnet come from this
    /// process's id and a counter, so runs side by side (tests) do not collide.
    pub fn create(brokers: usize) -> Result<Net, String> {
        available()?;
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let run_id = std::process::id() % 100_000 * 10 + RUNS.fetch_add(1, Ordering::SeqCst) % 10;
        let subnet = (run_id % 250 + 1) as u8;
        let mut net = Net {
            bridge: format!("spb{run_id}"),
            subnet,
            namespaces: Vec::new(),
            veths: Vec::new(),
        };
        // On error `net` is dropped, which removes whatever was made so far.
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        let host = format!("{}/24", net.host());
        run(&["ip", "addr", "add", &host, "dev", &net.bridge])?;
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        for i in 0..brokers {
            let ns = format!("spate-chaos-{run_id}-{}", i + 1);
            run(&["ip", "netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let veth = format!("spv{run_id}{i}");
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            net.veths.push(veth.clone());
            run(&["ip", "link", "set", &veth, "master", &net.bridge, "up"])?;
            let address = format!("{}/24", net.broker(i));
            run(&["ip", "-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            net.nft(i, &format!("add table inet {TABLE}"))?;
        }
        Ok(net)
    }

    /// The runner's address on the bridge (clients connect from it).
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// Broker `i`'s address (from 0).
    pub fn broker(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 10 + i as u8)
    }

    /// The command prefix that runs a program inside broker `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.namespaces[i].clone()]
    }

    /// Runs nftables commands (one script) inside broker `i`'s namespace.
    fn nft(&self, i: usize, script: &str) -> Result<(), String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i], "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
        let output = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft in {}: {}",
                self.namespaces[i],
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Sets broker `i`'s input rules: drop everything from `blocked` brokers, and a random
    /// `loss_permille` of every other packet.
    fn set_rules(&self, i: usize, blocked: &[usize], loss_permille: u32) -> Result<(), String> {
        let mut rules = String::new();
        if !blocked.is_empty() {
            let sources: Vec<String> =
                blocked.iter().map(|&b| self.broker(b).to_string()).collect();
            rules += &format!("    ip saddr {{ {} }} drop\n", sources.join(", "));
        }
        if loss_permille > 0 {
            rules += &format!("    numgen random mod 1000 < {loss_permille} drop\n");
        }
        let script = format!(
            "flush table inet {TABLE}\ntable inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        self.nft(i, &script)
    }

    /// Cuts the brokers into `sides`: no packet passes between brokers on different sides.
    /// A broker on no side keeps talking to everyone (a bridge between the sides).
    pub fn partition(&self, sides: &[Vec<usize>]) -> Result<(), String> {
        for i in 0..self.namespaces.len() {
            let Some(mine) = sides.iter().position(|side| side.contains(&i)) else {
                continue;
            };
            let blocked: Vec<usize> = sides
                .iter()
                .enumerate()
                .filter(|(s, _)| *s != mine)
                .flat_map(|(_, side)| side.iter().copied())
                .collect();
            self.set_rules(i, &blocked, 0)?;
        }
        Ok(())
    }

    /// Every broker loses `permille` of the packets it receives.
    pub fn loss(&self, permille: u32) -> Result<(), String> {
        (0..self.namespaces.len()).try_for_each(|i| self.set_rules(i, &[], permille))
    }

    /// Removes every fault.
    pub fn heal(&self) -> Result<(), String> {
        (0..self.namespaces.len())
            .try_for_each(|i| self.nft(i, &format!("flush table inet {TABLE}")))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Best effort: each removal is independent. Deleting a namespace deletes its veth end,
        // and with it the pair.
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "delete", ns]);
        }
        for veth in &self.veths {
            let _ = Command::new("ip").args(["link", "delete", veth]).output();
        }
        let _ = run(&["ip", "link", "delete", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// Runs `f` on a thread that entered namespace `ns` (a thread's network namespace is its
    /// own; sockets it makes stay in that namespace).
    fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
                    // SAFETY: setns on a valid namespace fd, for this thread only.
                    assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
                    f()
                })
                .join()
                .unwrap()
        })
    }

    /// Needs root and nft; otherwise says why and passes (the suite runs as root in CI).
    #[test]
    fn a_partition_cuts_brokers_apart_and_heal_joins_them() {
        if let Err(why) = available() {
            eprintln!("skipped: {why}");
            return;
        }
        let net = Net::create(3).unwrap();
        let listeners: Vec<(TcpListener, SocketAddr)> = (0..3)
            .map(|i| {
                in_ns(&net.namespaces[i], || {
                    let listener = TcpListener::bind((net.broker(i), 0)).unwrap();
                    let address = listener.local_addr().unwrap();
                    (listener, address)
                })
            })
            .collect();
        let reach = |from: usize, to: usize| {
            let address = listeners[to].1;
            in_ns(&net.namespaces[from], || {
                TcpStream::connect_timeout(&address, Duration::from_millis(300)).is_ok()
            })
        };
        assert!(reach(0, 1) && reach(1, 2) && reach(2, 0), "brokers reach each other");
        net.partition(&[vec![0], vec![1, 2]]).unwrap();
        assert!(!reach(0, 1) && !reach(2, 0), "cut");
        assert!(reach(1, 2), "same side");
        let host = TcpListener::bind((net.host(), 0)).unwrap();
        let host_address = host.local_addr().unwrap();
        let reach_host = in_ns(&net.namespaces[0], || {
            TcpStream::connect_timeout(&host_address, Duration::from_secs(1)).is_ok()
        });
        assert!(reach_host, "the runner is never cut off");
        net.heal().unwrap();
        assert!(reach(0, 1) && reach(2, 0), "healed");
    }
}

//! A client for the load-balancing end-to-end tests, run as its own process so it can sit in the
//! cgroup the socket-level load balancer is attached to (cgroup membership is per process) and
//! in a "pod" network namespace, while the test process stays outside both.
//!
//! `lbclient [--cgroup DIR] [--netns NAME] MODE ADDR:PORT [N]`
//! - `tcp-count`: N fresh TCP connections; prints each server's greeting line, or `ERR <kind>`.
//! - `tcp-hold`: one connection; prints the greeting, then for each stdin line sends it and
//!   prints the server's answer (until stdin closes).
//! - `udp-count`: N datagrams, each from a fresh socket; prints each reply, or `ERR <kind>`.
//! - `peer`: connects a UDP socket and prints getpeername() and the reply's source address.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |flag: &str| -> Option<String> {
        let i = args.iter().position(|a| a == flag)?;
        let value = args.get(i + 1).cloned();
        args.drain(i..=i + 1);
        value
    };
    let cgroup = take("--cgroup");
    let netns = take("--netns");
    if let Some(cg) = cgroup {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string())
            .expect("joining the cgroup");
    }
    if let Some(ns) = netns {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("opening the netns");
        // SAFETY: setns on a valid namespace fd, before any other thread exists.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
    let mode = args.first().cloned().unwrap_or_default();
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect("ADDR:PORT");
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let timeout = Duration::from_secs(3);
    match mode.as_str() {
        "tcp-count" => {
            for _ in 0..n {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => {
                        s.set_read_timeout(Some(timeout)).ok();
                        let mut line = String::new();
                        match BufReader::new(s).read_line(&mut line) {
                            Ok(_) => println!("{}", line.trim_end()),
                            Err(e) => println!("ERR {:?}", e.kind()),
                        }
                    }
                    Err(e) => println!("ERR {:?}", e.kind()),
                }
            }
        }
        "tcp-hold" => {
            let s = TcpStream::connect_timeout(&addr, timeout).expect("connect");
            s.set_read_timeout(Some(timeout)).ok();
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            let mut writer = s;
            let mut line = String::new();
            reader.read_line(&mut line).expect("greeting");
            println!("{}", line.trim_end());
            std::io::stdout().flush().ok();
            for input in std::io::stdin().lines() {
                let input = input.expect("stdin");
                writeln!(writer, "{input}").expect("send");
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => println!("ERR closed"),
                    Ok(_) => println!("{}", line.trim_end()),
                    Err(e) => println!("ERR {:?}", e.kind()),
                }
                std::io::stdout().flush().ok();
            }
        }
        "udp-count" => {
            for _ in 0..n {
                let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
                sock.set_read_timeout(Some(timeout)).ok();
                if let Err(e) = sock.send_to(b"hello", addr) {
                    println!("ERR {:?}", e.kind());
                    continue;
                }
                let mut buf = [0u8; 256];
                match sock.recv_from(&mut buf) {
                    Ok((len, from)) => println!(
                        "{} from {from}",
                        String::from_utf8_lossy(&buf[..len]).trim_end()
                    ),
                    Err(e) => println!("ERR {:?}", e.kind()),
                }
            }
        }
        "peer" => {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
            sock.set_read_timeout(Some(timeout)).ok();
            sock.connect(addr).expect("connect");
            println!("peer {}", sock.peer_addr().expect("getpeername"));
            sock.send(b"hello").expect("send");
            let mut buf = [0u8; 256];
            let (len, from) = sock.recv_from(&mut buf).expect("reply");
            println!(
                "{} from {from}",
                String::from_utf8_lossy(&buf[..len]).trim_end()
            );
        }
        other => panic!("unknown mode {other:?}"),
    }
}

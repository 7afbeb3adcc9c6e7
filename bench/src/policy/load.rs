//! The traffic: a TCP server in the server pod's network namespace and client threads in the
//! client pod's, all threads of the bench itself.
//!
//! A socket belongs to the network namespace of the thread that created it, so only the
//! threads that create sockets enter a namespace (`setns` on the container's
//! `/proc/<pid>/ns/net`, per thread): the listeners are made by a short-lived thread in the
//! server pod, the client threads live in the client pod for one measurement each.
//!
//! The protocol is fixed-size messages: the client writes [`MSG`] bytes, the server answers
//! [`MSG`] bytes, for as long as the connection lasts. Two measurements:
//! - new connections: connect, one request/response, close with RST (SO_LINGER 0: neither side
//!   keeps TIME_WAIT sockets, so ports recycle), in a loop; every connection's SYN is a new flow
//!   that policy must decide;
//! - established flows: one persistent connection per thread doing request/response
//!   ping-pong; every packet belongs to a flow policy already allowed.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::rules::{DENIED_PORT, PORT};
use crate::percentile;

/// Request and response size.
pub const MSG: usize = 32;

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) -> Result<()> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a valid namespace fd; it moves only the calling thread, which the caller
    // dedicates to that namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering {}", path.display()));
    }
    Ok(())
}

/// Pins the calling thread to `cpu` (best effort: an invalid CPU leaves it unpinned).
fn pin_to(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET bounds-checks the index;
    // sched_setaffinity(0, ...) applies to the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The highest CPU this process may run on.
pub fn last_allowed_cpu() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid output buffer of the size given; CPU_ISSET reads
    // it within bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
    }
}

/// The server in the server pod: a pool of threads accepting on [`PORT`] and answering
/// requests, and one thread accepting and closing on [`DENIED_PORT`]. The listening sockets
/// hold the pod's namespace: [`Server::stop`] (or drop) closes them before the pod is removed.
pub struct Server {
    stop: Arc<AtomicBool>,
    /// The threads hold clones (the same sockets); these are the handles stop() shuts down.
    listeners: Vec<TcpListener>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts `workers` threads answering on [`PORT`], pinned to `cpu` if given.
    pub fn start(netns: &Path, workers: usize, cpu: Option<usize>) -> Result<Self> {
        let path = netns.to_owned();
        let (main, denied) = std::thread::Builder::new()
            .name("server-bind".into())
            .spawn(move || -> Result<(TcpListener, TcpListener)> {
                enter_netns(&path)?;
                let bind = |port: u16| {
                    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                        .with_context(|| format!("listening on :{port} in {}", path.display()))
                };
                Ok((bind(PORT)?, bind(DENIED_PORT)?))
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("the server's bind thread panicked"))??;
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Server {
            stop: stop.clone(),
            listeners: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..workers {
            let listener = main.try_clone()?;
            let stop = stop.clone();
            server.threads.push(
                std::thread::Builder::new()
                    .name(format!("server-{i}"))
                    .spawn(move || {
                        pin_to(cpu);
                        serve(&listener, &stop);
                    })?,
            );
        }
        let listener = denied.try_clone()?;
        server.threads.push(
            std::thread::Builder::new()
                .name("server-denied".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        // Accept and close at once: reaching the port is all a probe needs.
                        if listener.accept().is_err() && !stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })?,
        );
        server.listeners = vec![main, denied];
        Ok(server)
    }

    /// Stops the threads and closes the listeners: shutdown() wakes every blocked accept().
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            // SAFETY: shutdown on a listening socket this struct owns; no memory is involved.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.listeners.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((stream, _)) = listener.accept() else {
            if !stop.load(Ordering::SeqCst) {
                // EMFILE and friends: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(1));
            }
            continue;
        };
        let _ = answer(stream, stop);
    }
}

/// Answers every request on one connection until the client closes it.
fn answer(mut stream: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    // Bounded reads, so a stop is seen even on a connection the client never closed.
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; MSG];
    loop {
        let mut got = 0;
        while got < MSG {
            match stream.read(&mut buf[got..]) {
                Ok(0) => return Ok(()),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        stream.write_all(&buf)?;
    }
}

/// One measurement's parameters.
#[derive(Clone)]
pub struct LoadSpec {
    pub client_netns: PathBuf,
    pub server: Ipv4Addr,
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// The CPU every client thread runs on (the server's threads run there too).
    pub cpu: Option<usize>,
}

/// New connections per second.
#[derive(Clone, Debug, Default)]
pub struct ConnResult {
    pub conns: u64,
    pub errors: u64,
    pub conn_per_s: f64,
    /// Connect + request/response, per connection.
    pub p50_us: f64,
    pub p99_us: f64,
    pub first_error: Option<String>,
}

/// Request/response transactions per second on established connections.
#[derive(Clone, Debug, Default)]
pub struct PingPongResult {
    pub transactions: u64,
    pub trans_per_s: f64,
    /// Mean round trip of one transaction, per connection.
    pub us_per_trans: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Default)]
struct ThreadStats {
    count: u64,
    errors: u64,
    elapsed: Duration,
    lat_ns: Vec<u32>,
    first_error: Option<String>,
}

/// Runs `work(warm_until, until)` on `spec.threads` threads in the client pod, started
/// together after each has entered the namespace.
fn on_client_threads(
    spec: &LoadSpec,
    work: impl Fn(Instant, Instant) -> ThreadStats + Sync,
) -> Result<Vec<ThreadStats>> {
    let barrier = Barrier::new(spec.threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|_| {
                let barrier = &barrier;
                let work = &work;
                s.spawn(move || -> Result<ThreadStats> {
                    // Every thread reaches the barrier, even one that failed to enter the
                    // namespace, or the others would wait forever.
                    pin_to(spec.cpu);
                    let entered = enter_netns(&spec.client_netns);
                    barrier.wait();
                    entered?;
                    let warm_until = Instant::now() + spec.warmup;
                    Ok(work(warm_until, warm_until + spec.duration))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
            })
            .collect()
    })
}

/// New-connection rate: each thread loops connect + request/response + close.
pub fn connections(spec: &LoadSpec) -> Result<ConnResult> {
    let addr = sockaddr(SocketAddrV4::new(spec.server, PORT));
    let stats = on_client_threads(spec, |warm_until, until| {
        let _ = connect_loop(&addr, warm_until, false);
        connect_loop(&addr, until, true)
    })?;
    let conns: u64 = stats.iter().map(|s| s.count).sum();
    let elapsed = stats
        .iter()
        .map(|s| s.elapsed.as_secs_f64())
        .fold(0.0, f64::max);
    let mut lat: Vec<f64> = stats
        .iter()
        .flat_map(|s| s.lat_ns.iter().map(|&ns| f64::from(ns) / 1000.0))
        .collect();
    lat.sort_by(f64::total_cmp);
    Ok(ConnResult {
        conns,
        errors: stats.iter().map(|s| s.errors).sum(),
        conn_per_s: if elapsed > 0.0 {
            conns as f64 / elapsed
        } else {
            0.0
        },
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        first_error: stats.iter().find_map(|s| s.first_error.clone()),
    })
}

/// Established-flow rate: each thread keeps one connection and does request/response on it.
pub fn ping_pong(spec: &LoadSpec) -> Result<PingPongResult> {
    let target = SocketAddrV4::new(spec.server, PORT);
    let stats = on_client_threads(spec, |warm_until, until| {
        let mut st = ThreadStats::default();
        let mut stream = match TcpStream::connect_timeout(&target.into(), Duration::from_secs(1))
            .and_then(|s| {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.set_write_timeout(Some(Duration::from_secs(1)))?;
                Ok(s)
            }) {
            Ok(s) => s,
            Err(e) => {
                st.errors += 1;
                st.first_error = Some(format!("connect {target}: {e}"));
                return st;
            }
        };
        let mut buf = [7u8; MSG];
        let mut exchange = |buf: &mut [u8; MSG]| -> std::io::Result<()> {
            stream.write_all(buf)?;
            stream.read_exact(buf)
        };
        while Instant::now() < warm_until {
            if let Err(e) = exchange(&mut buf) {
                st.errors += 1;
                st.first_error = Some(format!("warm-up exchange: {e}"));
                return st;
            }
        }
        let start = Instant::now();
        let mut now = start;
        while now < until {
            if let Err(e) = exchange(&mut buf) {
                st.errors += 1;
                st.first_error = Some(format!("exchange: {e}"));
                break;
            }
            st.count += 1;
            now = Instant::now();
        }
        st.elapsed = now - start;
        set_linger_zero(stream.as_raw_fd());
        st
    })?;
    let transactions: u64 = stats.iter().map(|s| s.count).sum();
    let elapsed = stats
        .iter()
        .map(|s| s.elapsed.as_secs_f64())
        .fold(0.0, f64::max);
    // Mean round trip per connection: each connection's elapsed time over its transactions.
    let per_conn: Vec<f64> = stats
        .iter()
        .filter(|s| s.count > 0)
        .map(|s| s.elapsed.as_secs_f64() * 1e6 / s.count as f64)
        .collect();
    Ok(PingPongResult {
        transactions,
        trans_per_s: if elapsed > 0.0 {
            transactions as f64 / elapsed
        } else {
            0.0
        },
        us_per_trans: if per_conn.is_empty() {
            f64::NAN
        } else {
            per_conn.iter().sum::<f64>() / per_conn.len() as f64
        },
        errors: stats.iter().map(|s| s.errors).sum(),
        first_error: stats.iter().find_map(|s| s.first_error.clone()),
    })
}

/// Whether a connection from the client pod to `server:port` is established within `limit`
/// (and, on [`PORT`], answered). A policy that drops the SYN makes it time out.
pub fn reachable(
    client_netns: &Path,
    server: Ipv4Addr,
    port: u16,
    limit: Duration,
) -> Result<bool> {
    let path = client_netns.to_owned();
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || -> Result<bool> {
            enter_netns(&path)?;
            let target = SocketAddrV4::new(server, port);
            let Ok(mut s) = TcpStream::connect_timeout(&target.into(), limit) else {
                return Ok(false);
            };
            set_linger_zero(s.as_raw_fd());
            if port != PORT {
                return Ok(true);
            }
            s.set_read_timeout(Some(limit))?;
            s.set_write_timeout(Some(limit))?;
            let mut buf = [1u8; MSG];
            Ok(s.write_all(&buf)
                .and_then(|()| s.read_exact(&mut buf))
                .is_ok())
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
}

/// Waits (up to `limit`) until reachability of `port` is `want`: a change the CLI reported
/// as written may take effect a moment later.
pub fn wait_reachable(
    client_netns: &Path,
    server: Ipv4Addr,
    port: u16,
    want: bool,
    limit: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if reachable(client_netns, server, port, Duration::from_millis(300))? == want {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!(
                "{server}:{port} {} from the client pod after {limit:?}",
                if want {
                    "still unreachable"
                } else {
                    "still reachable"
                }
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// TCP segments retransmitted so far in the network namespace at `netns` (`RetransSegs` of
/// its /proc/net/snmp): a measurement during which it grows lost packets somewhere.
pub fn retransmitted(netns: &Path) -> Result<u64> {
    let path = netns.to_owned();
    std::thread::Builder::new()
        .name("snmp".into())
        .spawn(move || -> Result<u64> {
            enter_netns(&path)?;
            // thread-self: this thread's namespace (self would be the process's).
            let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
            let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
            let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
                bail!("no Tcp lines in /proc/net/snmp");
            };
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == "RetransSegs")
                .and_then(|(_, v)| v.parse().ok())
                .context("no RetransSegs in /proc/net/snmp")
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the snmp thread panicked"))?
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a pointer to a live local of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Connects in a loop until `until`.
fn connect_loop(addr: &libc::sockaddr_in, until: Instant, record: bool) -> ThreadStats {
    let mut st = ThreadStats {
        lat_ns: Vec::with_capacity(if record { 1 << 17 } else { 0 }),
        ..Default::default()
    };
    let start = Instant::now();
    let mut now = start;
    while now < until {
        match connect_once(addr) {
            Ok((t0, t1)) => {
                st.count += 1;
                if record {
                    st.lat_ns
                        .push(u32::try_from((t1 - t0).as_nanos()).unwrap_or(u32::MAX));
                }
                now = t1;
            }
            Err(err) => {
                st.errors += 1;
                if st.first_error.is_none() {
                    st.first_error = Some(err.to_string());
                }
                now = Instant::now();
            }
        }
    }
    st.elapsed = now - start;
    st
}

/// One connection: socket, timeouts, connect, one request/response, RST close. Raw syscalls
/// keep the loop to what every mode pays alike. Returns the instants just before connect()
/// and just after the response arrived.
fn connect_once(addr: &libc::sockaddr_in) -> std::io::Result<(Instant, Instant)> {
    // SAFETY: plain socket syscalls on an fd this function owns and always closes; every
    // pointer passed points to a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let result = (|| {
            // Bounded: a dropped SYN costs 1 s, not the kernel's 2 minutes.
            let tv = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            let t0 = Instant::now();
            if libc::connect(
                fd,
                (addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut buf = [3u8; MSG];
            if libc::write(fd, buf.as_ptr().cast(), MSG) != MSG as isize {
                return Err(std::io::Error::last_os_error());
            }
            let mut got = 0;
            while got < MSG {
                let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), MSG - got);
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed before the response",
                    ));
                }
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                got += n as usize;
            }
            Ok((t0, Instant::now()))
        })();
        set_linger_zero(fd);
        libc::close(fd);
        result
    }
}

//! The load generator: K threads in the client pod, each looping connect(target) + read one
//! byte + close (with RST, so neither side keeps TIME_WAIT sockets and the ports recycle) for a
//! bounded time and count, against targets picked uniformly at random.
//!
//! It runs as a separate process (`berth-bench services-load`, re-executed from the bench) for
//! every mode alike: cgroup v2 membership is per process, and berth's connect() hook is attached
//! to the bench's cgroup, so the client must be a process of its own placed in that cgroup
//! before it opens a socket. Results come back as one JSON line on stdout.

use std::{
    fs::File,
    net::SocketAddrV4,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::Barrier,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Rng, child};

/// Arguments of the hidden `services-load` subcommand (the bench passes them; not for users).
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Network namespace to run in (`/run/netns/NAME`).
    #[arg(long)]
    netns: PathBuf,
    /// cgroup v2 directory to join first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// File of `a.b.c.d:port` lines to connect to.
    #[arg(long)]
    targets: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measured time.
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
    /// Unmeasured time before it (ARP, caches, CPU frequency).
    #[arg(long, default_value_t = 300)]
    warmup_ms: u64,
    /// Stop after this many measured connections in all.
    #[arg(long, default_value_t = 5_000_000)]
    max_conns: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What one measurement saw.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub conns: u64,
    pub errors: u64,
    pub conn_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Connections answered by each backend.
    pub backend_hits: Vec<u64>,
    pub first_error: Option<String>,
}

impl LoadResult {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "conns": self.conns, "errors": self.errors, "conn_per_s": self.conn_per_s,
            "connect_p50_us": self.p50_us, "connect_p99_us": self.p99_us,
            "backend_hits": self.backend_hits, "first_error": self.first_error,
        })
    }

    fn from_json(v: &serde_json::Value) -> Result<Self> {
        let f = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("load result lacks {k}"))
        };
        Ok(Self {
            conns: f("conns")? as u64,
            errors: f("errors")? as u64,
            conn_per_s: f("conn_per_s")?,
            p50_us: f("connect_p50_us")?,
            p99_us: f("connect_p99_us")?,
            backend_hits: v["backend_hits"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default(),
            first_error: v["first_error"].as_str().map(str::to_owned),
        })
    }
}

/// Parent side: runs one measurement in `netns`, in `cgroup`, against the targets in
/// `targets`, and returns what it saw.
pub struct LoadSpec<'a> {
    pub netns: &'a Path,
    pub cgroup: &'a Path,
    pub targets: &'a Path,
    pub threads: usize,
    pub duration_ms: u64,
    pub seed: u64,
    pub log: &'a Path,
}

pub fn measure(spec: &LoadSpec<'_>) -> Result<LoadResult> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let warmup_ms = (spec.duration_ms / 5).clamp(100, 500);
    let mut cmd = Command::new(exe);
    cmd.arg("services-load")
        .arg("--netns")
        .arg(spec.netns)
        .arg("--cgroup")
        .arg(spec.cgroup)
        .arg("--targets")
        .arg(spec.targets)
        .args(["--threads", &spec.threads.to_string()])
        .args(["--duration-ms", &spec.duration_ms.to_string()])
        .args(["--warmup-ms", &warmup_ms.to_string()])
        .args(["--seed", &spec.seed.to_string()]);
    // Warm-up + measurement + per-socket timeouts (1 s connect, 1 s read) + start-up slack.
    let limit = Duration::from_millis(warmup_ms + spec.duration_ms + 15_000);
    let done = child::run(
        &mut cmd,
        child::Spawn {
            netns: None,
            log: spec.log,
            stdin: None,
            death_signal: libc::SIGKILL,
        },
        limit,
    )?;
    if done.timed_out() {
        bail!("the load generator did not finish within {limit:?}");
    }
    if !done.success() {
        bail!("the load generator failed: {}", done.stderr_tail());
    }
    let stdout = done.stdout();
    let value: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("parsing the load generator's output {stdout:?}"))?;
    LoadResult::from_json(&value)
}

/// Child side: the `services-load` subcommand.
pub fn worker(args: &WorkerArgs) -> Result<()> {
    // Join the cgroup and the namespace while single-threaded: the threads spawned below
    // inherit both.
    if let Some(cg) = &args.cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", cg.display()))?;
    }
    let ns =
        File::open(&args.netns).with_context(|| format!("opening {}", args.netns.display()))?;
    // SAFETY: setns with a valid namespace fd, before any other thread exists.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("entering the client namespace");
    }
    drop(ns);
    let targets: Vec<SocketAddrV4> = std::fs::read_to_string(&args.targets)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .with_context(|| format!("bad target {l:?}"))
        })
        .collect::<Result<_>>()?;
    if targets.is_empty() {
        bail!("no targets");
    }
    let threads = args.threads.clamp(1, 64);
    let per_thread_max = (args.max_conns / threads as u64).max(1);

    let barrier = Barrier::new(threads);
    let stats: Vec<ThreadStats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let targets = &targets;
                let barrier = &barrier;
                let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(t as u64);
                s.spawn(move || {
                    let mut rng = Rng::new(seed);
                    barrier.wait();
                    let warm_until = Instant::now() + Duration::from_millis(args.warmup_ms);
                    let _ = hammer(targets, &mut rng, warm_until, u64::MAX, false);
                    barrier.wait();
                    let until = Instant::now() + Duration::from_millis(args.duration_ms);
                    hammer(targets, &mut rng, until, per_thread_max, true)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });

    let conns: u64 = stats.iter().map(|s| s.conns).sum();
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    let elapsed = stats
        .iter()
        .map(|s| s.elapsed.as_secs_f64())
        .fold(0.0, f64::max);
    let mut lat: Vec<u32> = stats
        .iter()
        .flat_map(|s| s.lat_ns.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let rank = (p / 100.0 * (lat.len() - 1) as f64).round() as usize;
        f64::from(lat[rank.min(lat.len() - 1)]) / 1000.0
    };
    let mut hits = vec![0u64; 256];
    for s in &stats {
        for (i, h) in s.hits.iter().enumerate() {
            hits[i] += h;
        }
    }
    let used = hits.iter().rposition(|&h| h > 0).map_or(0, |i| i + 1);
    hits.truncate(used);
    let result = LoadResult {
        conns,
        errors,
        conn_per_s: if elapsed > 0.0 {
            conns as f64 / elapsed
        } else {
            0.0
        },
        p50_us: pct(50.0),
        p99_us: pct(99.0),
        backend_hits: hits,
        first_error: stats.iter().find_map(|s| s.first_error.clone()),
    };
    println!("{}", result.to_json());
    Ok(())
}

#[derive(Default)]
struct ThreadStats {
    conns: u64,
    errors: u64,
    elapsed: Duration,
    lat_ns: Vec<u32>,
    hits: Vec<u64>,
    first_error: Option<String>,
}

/// Connects in a loop until `until` or `max` successful connections.
fn hammer(
    targets: &[SocketAddrV4],
    rng: &mut Rng,
    until: Instant,
    max: u64,
    record: bool,
) -> ThreadStats {
    let addrs: Vec<libc::sockaddr_in> = targets.iter().map(sockaddr).collect();
    let mut st = ThreadStats {
        hits: vec![0; 256],
        lat_ns: Vec::with_capacity(if record { max.min(1 << 21) as usize } else { 0 }),
        ..Default::default()
    };
    let start = Instant::now();
    let mut now = start;
    while now < until && st.conns < max {
        let i = rng.below(addrs.len());
        match connect_once(&addrs[i]) {
            Ok((backend, t0, t1)) => {
                st.conns += 1;
                st.hits[usize::from(backend)] += 1;
                if record {
                    st.lat_ns
                        .push(u32::try_from((t1 - t0).as_nanos()).unwrap_or(u32::MAX));
                }
                now = t1;
            }
            Err(err) => {
                st.errors += 1;
                if st.first_error.is_none() {
                    st.first_error = Some(format!("{}: {err}", targets[i]));
                }
                now = Instant::now();
            }
        }
    }
    st.elapsed = now - start;
    st
}

fn sockaddr(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One connection: returns the byte the backend sent (its index) and the instants just before
/// connect() and just after the byte arrived. Raw syscalls keep the loop to what every mode
/// pays alike: socket, 2 timeouts, connect, read, linger, close.
fn connect_once(addr: &libc::sockaddr_in) -> std::io::Result<(u8, Instant, Instant)> {
    // SAFETY: plain socket syscalls on an fd this function owns and always closes; every
    // pointer passed points to a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let result = (|| {
            // Bounded: a dropped SYN or a silent backend costs 1 s, not the kernel's 2 minutes.
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
            let mut byte = 0u8;
            let n = libc::read(fd, (&raw mut byte).cast(), 1);
            let t1 = Instant::now();
            match n {
                1 => Ok((byte, t0, t1)),
                0 => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the first byte",
                )),
                _ => Err(std::io::Error::last_os_error()),
            }
        })();
        // RST on close: no TIME_WAIT on either side, so a few seconds at ~20k conn/s never
        // exhaust the 28k ephemeral ports or pile up sockets.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::close(fd);
        result
    }
}

//! The results: per service count, a programming table (convergence, cold start, one change)
//! and a cost table (CPU, memory, connection rate against the direct ceiling), ratios of berth
//! against each kube-proxy, and the goals judged on what was measured.

use std::{fmt::Write as _, time::Duration};

use serde_json::{Value, json};

use super::{
    Args, ContenderResult, Load, SizeResult, contenders::Kind, fmt_ms, stats::bucket_quantile,
};
use crate::{percentile, services::report::median, thousands};

/// Quantile `p` (0-100) of latencies in ms, with `timeouts` counted as above `limit_ms`;
/// (value, whether it is a timeout).
fn quantile_ms(values: &[f64], timeouts: usize, limit_ms: f64, p: f64) -> Option<(f64, bool)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.extend(std::iter::repeat_n(f64::INFINITY, timeouts));
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = percentile(&v, p);
    Some(if q.is_finite() {
        (q, false)
    } else {
        (limit_ms, true)
    })
}

fn fmt_q(q: Option<(f64, bool)>) -> String {
    match q {
        None => "-".to_owned(),
        Some((v, true)) => format!(">{}", fmt_ms(v)),
        Some((v, false)) => fmt_ms(v),
    }
}

fn fmt_s(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |s| fmt_ms(s * 1000.0))
}

fn fmt_mb(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |m| format!("{m:.0} MB"))
}

fn fmt_hist_ms(h: &[(f64, f64)], q: f64) -> String {
    bucket_quantile(h, q).map_or("-".to_owned(), |s| fmt_ms(s * 1000.0))
}

fn conn(loads: &[Load]) -> Option<f64> {
    median(loads.iter().map(|l| l.conn_per_s))
}

fn cpu_s(c: &ContenderResult) -> Option<f64> {
    c.cpu_total.map(|c| c.total())
}

fn change_p99(c: &ContenderResult, limit_ms: f64) -> Option<(f64, bool)> {
    quantile_ms(&c.change_ms, c.change_timeouts, limit_ms, 99.0)
}

pub fn render(args: &Args, results: &[SizeResult], env: &Value, wall: Duration) -> String {
    let mut out = String::new();
    let limit_ms = args.change_timeout_s as f64 * 1000.0;
    let _ = writeln!(
        out,
        "\nberth vs kube-proxy {} (iptables mode) against one real API server, each in its own node namespace; {} CPUs, kernel {}",
        env["kube_proxy"].as_str().unwrap_or("?"),
        env["cpus"],
        env["kernel"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "converge: every ClusterIP answers, from the first / the last create (≤ 0: before the last create call returned); cold start: a fresh\n\
         process with all objects in the API server;\n\
         change: one EndpointSlice's 10 endpoints replaced, from the write returning to the new backends answering (probe), and the\n\
         contender's own histogram, the same definition for both: the slice's last-change-trigger-time (set just before the write) to\n\
         rules or maps written (kubeproxy_/berth_kube_network_programming_duration_seconds; quantiles interpolated in buckets)"
    );
    let mut footnotes = Vec::new();
    for r in results {
        let direct = conn(&r.direct);
        let _ = writeln!(
            out,
            "\n== {} Services × 10 endpoints: objects created in {} ({}); direct ceiling {} conn/s{}",
            thousands(r.n as f64),
            fmt_s(r.create_s),
            match args.create_with {
                super::CreateWith::KubeRs =>
                    format!("kube-rs, {} in flight", args.create_concurrency),
                super::CreateWith::Kubectl => "kubectl create -f".to_owned(),
            },
            direct.map_or("-".to_owned(), thousands),
            crate::footnote_marks(
                &mut footnotes,
                &thousands(r.n as f64),
                r.status.iter().chain(&r.notes)
            )
        );
        let _ = writeln!(
            out,
            "{:<19} {:>11} {:>11} {:>10}  {:>9} {:>9} {:>9} {:>9} {:>4}",
            "programming",
            "conv/first",
            "conv/last",
            "cold start",
            "chg p50",
            "chg p99",
            "own p50",
            "own p99",
            "n"
        );
        for c in &r.contenders {
            let marks = crate::footnote_marks(
                &mut footnotes,
                &format!("{} {}", thousands(r.n as f64), c.kind.name()),
                c.status.iter().chain(&c.notes),
            );
            let _ = writeln!(
                out,
                "{:<19} {:>11} {:>11} {:>10}  {:>9} {:>9} {:>9} {:>9} {:>4}{marks}",
                c.kind.name(),
                fmt_s(c.converge_first_s),
                fmt_s(c.converge_last_s),
                fmt_s(c.cold_s),
                fmt_q(quantile_ms(&c.change_ms, c.change_timeouts, limit_ms, 50.0)),
                fmt_q(change_p99(c, limit_ms)),
                fmt_hist_ms(&c.own_hist, 0.5),
                fmt_hist_ms(&c.own_hist, 0.99),
                c.change_ms.len() + c.change_timeouts,
            );
            if c.kind == Kind::Berth && !(c.burst_ms.is_empty() && c.burst_timeouts == 0) {
                let _ = writeln!(
                    out,
                    "{:<19} {:>11} {:>11} {:>10}  {:>9} {:>9} {:>9} {:>9} {:>4}",
                    "  berth alone",
                    "",
                    "",
                    "",
                    fmt_q(quantile_ms(&c.burst_ms, c.burst_timeouts, 10_000.0, 50.0)),
                    fmt_q(quantile_ms(&c.burst_ms, c.burst_timeouts, 10_000.0, 99.0)),
                    fmt_hist_ms(&c.burst_hist, 0.5),
                    fmt_hist_ms(&c.burst_hist, 0.99),
                    c.burst_ms.len() + c.burst_timeouts,
                );
            }
        }
        if let Some(b) = r.contenders.iter().find(|c| c.kind == Kind::Berth)
            && !(b.own_event_hist.is_empty() && b.burst_event_hist.is_empty())
        {
            let _ = writeln!(
                out,
                "  berth's own event received → maps written: side by side p50 {} p99 {}; alone p50 {} p99 {}",
                fmt_hist_ms(&b.own_event_hist, 0.5),
                fmt_hist_ms(&b.own_event_hist, 0.99),
                fmt_hist_ms(&b.burst_event_hist, 0.5),
                fmt_hist_ms(&b.burst_event_hist, 0.99),
            );
        }
        if !r.write_ms.is_empty() {
            let _ = writeln!(
                out,
                "  the EndpointSlice patch itself (API round trip, before any of the above): p50 {} p99 {}",
                fmt_q(quantile_ms(&r.write_ms, 0, 0.0, 50.0)),
                fmt_q(quantile_ms(&r.write_ms, 0, 0.0, 99.0)),
            );
        }
        let _ = writeln!(
            out,
            "{:<19} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}  {:>10} {:>6} {:>10} {:>6}",
            "cost, data plane",
            "CPU conv",
            "CPU run",
            "RSS conv",
            "RSS cold",
            "RSS peak",
            "+children",
            "1 VIP c/s",
            "ratio",
            "any VIP",
            "ratio"
        );
        for c in &r.contenders {
            let (one, all) = (conn(&c.conn_one), conn(&c.conn_all));
            let ratio = |v: Option<f64>| {
                v.zip(direct)
                    .map_or("-".to_owned(), |(v, d)| format!("{:.2}", v / d))
            };
            let _ = writeln!(
                out,
                "{:<19} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}  {:>10} {:>6} {:>10} {:>6}",
                c.kind.name(),
                fmt_s(c.converge_cpu.map(|x| x.total())),
                fmt_s(cpu_s(c)),
                fmt_mb(c.converged_rss_mb),
                fmt_mb(c.cold_rss_mb),
                fmt_mb(c.hwm_mb),
                // The sampled tree misses short peaks the process's own VmHWM keeps.
                fmt_mb(match (c.tree_peak_mb, c.hwm_mb) {
                    (Some(t), Some(h)) => Some(t.max(h)),
                    (t, h) => t.or(h),
                }),
                one.map_or("-".to_owned(), thousands),
                ratio(one),
                all.map_or("-".to_owned(), thousands),
                ratio(all),
            );
        }
        let _ = writeln!(
            out,
            "{:<19} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}  {:>10} {:>6}",
            "direct (ceiling)",
            "",
            "",
            "",
            "",
            "",
            "",
            direct.map_or("-".to_owned(), thousands),
            direct.map_or("-".to_owned(), |_| "1.00".to_owned()),
        );
        for (base, line) in comparisons(r, limit_ms) {
            let _ = writeln!(out, "berth vs {}: {line}", base.name());
        }
    }
    if !footnotes.is_empty() {
        out.push('\n');
        for (i, note) in footnotes.iter().enumerate() {
            let _ = writeln!(out, "[{}] {note}", i + 1);
        }
    }
    let goals = goals(results, limit_ms);
    if !goals.is_empty() {
        out.push_str("\ngoals:\n");
        for (goal, value, verdict) in &goals {
            let _ = writeln!(out, "  {verdict:<7} {goal}: {value}");
        }
    }
    let _ = writeln!(
        out,
        "\nCPU: utime+stime of the process and its reaped children (kube-proxy's iptables-save/-restore), conv = from the first create\n\
         to its own convergence, run = every instance over the whole count; RSS conv = VmRSS when converged from the empty cluster,\n\
         cold = VmRSS when converged after the cold start, peak = VmHWM of either instance, +children = the process with its\n\
         children (sampled every 100 ms, at least the peak); connection rate: {} threads, {} ms, median of {} interleaved reps,\n\
         control planes paused; one VIP, or VIPs picked uniformly among all. Run took {:.0} s.",
        args.threads,
        args.duration_ms,
        args.reps,
        wall.as_secs_f64()
    );
    out
}

/// berth against each kube-proxy at one count: (baseline, rendered ratios).
fn comparisons(r: &SizeResult, limit_ms: f64) -> Vec<(Kind, String)> {
    let Some(b) = r.contenders.iter().find(|c| c.kind == Kind::Berth) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for x in r.contenders.iter().filter(|c| c.kind.is_kube_proxy()) {
        let ratio = |a: Option<f64>, b: Option<f64>| {
            a.zip(b)
                .filter(|(_, b)| *b > 0.0)
                .map_or("-".to_owned(), |(a, b)| format!("{:.3}x", a / b))
        };
        let p99 = |c: &ContenderResult| change_p99(c, limit_ms).map(|q| q.0);
        out.push((
            x.kind,
            format!(
                "converge after last create {}, cold start {}, change p99 {}, CPU (run) {}, RSS peak {}, conn/s one VIP {}, any VIP {}",
                ratio(b.converge_last_s, x.converge_last_s),
                ratio(b.cold_s, x.cold_s),
                ratio(p99(b), p99(x)),
                ratio(cpu_s(b), cpu_s(x)),
                ratio(b.hwm_mb, x.hwm_mb),
                ratio(conn(&b.conn_one), conn(&x.conn_one)),
                ratio(conn(&b.conn_all), conn(&x.conn_all)),
            ),
        ));
    }
    out
}

/// The goals at the largest count measured (they are stated at 10,000).
fn goals(results: &[SizeResult], limit_ms: f64) -> Vec<(String, String, &'static str)> {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = Vec::new();
    let Some(r) = results
        .iter()
        .filter(|r| r.contenders.iter().any(|c| c.kind == Kind::Berth))
        .max_by_key(|r| r.n)
    else {
        return out;
    };
    let Some(b) = r.contenders.iter().find(|c| c.kind == Kind::Berth) else {
        return out;
    };
    let at = if r.n == 10_000 {
        format!("at {} Services", thousands(r.n as f64))
    } else {
        format!(
            "at {} Services (the goal is stated at 10,000)",
            thousands(r.n as f64)
        )
    };
    if let Some((v, timeout)) = change_p99(b, limit_ms) {
        out.push((
            format!("one change programmed in under 50 ms p99 {at}, side by side with kube-proxy"),
            format!(
                "{}{} (probe, {} changes)",
                if timeout { ">" } else { "" },
                fmt_ms(v),
                b.change_ms.len() + b.change_timeouts
            ),
            verdict(!timeout && v < 50.0),
        ));
    }
    if let Some((v, timeout)) = quantile_ms(&b.burst_ms, b.burst_timeouts, 10_000.0, 99.0) {
        out.push((
            format!("one change programmed in under 50 ms p99 {at}, berth alone"),
            format!(
                "{}{} (probe, {} changes)",
                if timeout { ">" } else { "" },
                fmt_ms(v),
                b.burst_ms.len() + b.burst_timeouts
            ),
            verdict(!timeout && v < 50.0),
        ));
    }
    match b.cold_s {
        Some(s) => out.push((
            format!("converges from a cold start in under 5 s {at}"),
            fmt_s(Some(s)),
            verdict(s < 5.0),
        )),
        None => out.push((
            format!("converges from a cold start in under 5 s {at}"),
            b.status.clone().unwrap_or_else(|| "not measured".into()),
            "NOT met",
        )),
    }
    let kps: Vec<&ContenderResult> = r
        .contenders
        .iter()
        .filter(|c| c.kind.is_kube_proxy())
        .collect();
    for (what, get) in [
        (
            "CPU time (whole run)",
            cpu_s as fn(&ContenderResult) -> Option<f64>,
        ),
        ("resident memory (peak)", |c: &ContenderResult| c.hwm_mb),
    ] {
        let mine = get(b);
        let theirs: Vec<(Kind, Option<f64>)> = kps.iter().map(|c| (c.kind, get(c))).collect();
        let ok = mine.is_some()
            && !theirs.is_empty()
            && theirs
                .iter()
                .all(|(_, t)| t.zip(mine).is_some_and(|(t, m)| m < t));
        let unit = |v: Option<f64>| match what {
            "CPU time (whole run)" => fmt_s(v),
            _ => fmt_mb(v),
        };
        out.push((
            format!("less {what} than kube-proxy {at}"),
            format!(
                "berth {} vs {}",
                unit(mine),
                theirs
                    .iter()
                    .map(|(k, t)| format!("{} {}", k.name(), unit(*t)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            verdict(ok),
        ));
    }
    out
}

fn loads_json(l: &[Load]) -> Value {
    json!({
        "median_conn_per_s": conn(l),
        "median_connect_p50_us": median(l.iter().map(|x| x.p50_us)),
        "reps": l.iter().map(Load::to_json).collect::<Vec<_>>(),
    })
}

fn contender_json(c: &ContenderResult, limit_ms: f64, direct: Option<f64>) -> Value {
    let q = |v: &[f64], t: usize, lim: f64, p: f64| {
        quantile_ms(v, t, lim, p).map(|(x, timeout)| json!({"ms": x, "timeout": timeout}))
    };
    json!({
        "contender": c.kind.name(),
        "status": c.status,
        "notes": c.notes,
        "converge_from_first_create_s": c.converge_first_s,
        "converge_from_last_create_s": c.converge_last_s,
        "converge_cpu_s": c.converge_cpu.map(|x| json!({"own": x.own_s, "children": x.children_s})),
        "converged_rss_mb": c.converged_rss_mb,
        "verified_reachable": c.verified.map(|(a, b)| json!([a, b])),
        "cold_start_s": c.cold_s,
        "cold_start_cpu_s": c.cold_cpu.map(|x| json!({"own": x.own_s, "children": x.children_s})),
        "cold_start_rss_mb": c.cold_rss_mb,
        "change": {
            "probe_ms": c.change_ms, "timeouts": c.change_timeouts,
            "visible_at_first_probe": c.change_immediate,
            "p50": q(&c.change_ms, c.change_timeouts, limit_ms, 50.0),
            "p99": q(&c.change_ms, c.change_timeouts, limit_ms, 99.0),
            "own_histogram": super::hist_json(&c.own_hist),
            "event_to_maps_histogram": super::hist_json(&c.own_event_hist),
        },
        "alone": {
            "probe_ms": c.burst_ms, "timeouts": c.burst_timeouts, "seen_at_s": c.burst_at_s,
            "p50": q(&c.burst_ms, c.burst_timeouts, 10_000.0, 50.0),
            "p99": q(&c.burst_ms, c.burst_timeouts, 10_000.0, 99.0),
            "own_histogram": super::hist_json(&c.burst_hist),
            "event_to_maps_histogram": super::hist_json(&c.burst_event_hist),
        },
        "catch_up_after_pause_s": c.catch_up_s,
        "cpu_run_s": c.cpu_total.map(|x| json!({"own": x.own_s, "children": x.children_s, "total": x.total()})),
        "rss_end_mb": c.rss_end_mb,
        "rss_peak_mb": c.hwm_mb,
        "rss_peak_with_children_mb": c.tree_peak_mb,
        "conn_one_vip": loads_json(&c.conn_one),
        "conn_one_vip_ratio_vs_direct": conn(&c.conn_one).zip(direct).map(|(a, d)| a / d),
        "conn_any_vip": loads_json(&c.conn_all),
        "conn_any_vip_ratio_vs_direct": conn(&c.conn_all).zip(direct).map(|(a, d)| a / d),
        "extra": c.extra,
    })
}

pub fn json(args: &Args, results: &[SizeResult], env: &Value, wall: Duration) -> Value {
    let limit_ms = args.change_timeout_s as f64 * 1000.0;
    json!({
        "benchmark": "kube",
        "environment": env,
        "config": {
            "services": args.services, "endpoints_per_service": super::node::ENDPOINTS,
            "changes": args.changes, "burst_changes": args.burst_changes,
            "reps": args.reps, "duration_ms": args.duration_ms, "threads": args.threads,
            "create_with": format!("{:?}", args.create_with),
            "create_concurrency": args.create_concurrency,
            "converge_timeout_s": args.converge_timeout_s,
            "change_timeout_s": args.change_timeout_s,
            "nft_max_services": args.nft_max_services, "seed": args.seed,
        },
        "wall_s": wall.as_secs_f64(),
        "results": results.iter().map(|r| {
            let direct = conn(&r.direct);
            json!({
                "services": r.n, "status": r.status, "notes": r.notes,
                "create_s": r.create_s, "wall_s": r.wall_s, "slice_patch_ms": r.write_ms,
                "direct": loads_json(&r.direct),
                "contenders": r.contenders.iter().map(|c| contender_json(c, limit_ms, direct)).collect::<Vec<_>>(),
                "comparisons": comparisons(r, limit_ms).into_iter().map(|(k, l)| json!({"baseline": k.name(), "ratios": l})).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "goals": goals(results, limit_ms).into_iter().map(|(g, v, verdict)| json!({"goal": g, "measured": v, "verdict": verdict})).collect::<Vec<_>>(),
    })
}

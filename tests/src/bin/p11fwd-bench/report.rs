//! Results: statistics, the markdown tables and SVG chart for docs/benchmarks.md, and the raw
//! numbers as JSON.

use std::fmt::Write as _;

use crate::drivers::Status;

/// Nearest-rank percentile of `v` (sorted ascending), in milliseconds.
pub(crate) fn pct_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

/// One stack × workload × delay × threads run.
#[derive(Debug, Clone)]
pub(crate) struct OpRun {
    pub(crate) stack: &'static str,
    pub(crate) workload: &'static str,
    pub(crate) delay_ms: u32,
    pub(crate) threads: usize,
    pub(crate) status: Status,
    pub(crate) ops: usize,
    pub(crate) errors: usize,
    pub(crate) ops_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) rt_per_op: Option<f64>,
    pub(crate) load_rt: Option<u64>,
    pub(crate) load_ms: f64,
    /// The first operation (checked; it may fetch what later ones reuse).
    pub(crate) first_rt: Option<u64>,
    pub(crate) first_ms: f64,
}

/// `openssl req -new` runs of one stack at one delay.
#[derive(Debug, Clone)]
pub(crate) struct ReqRun {
    pub(crate) stack: &'static str,
    pub(crate) delay_ms: u32,
    pub(crate) status: Status,
    pub(crate) runs: usize,
    pub(crate) wall_ms_median: f64,
    pub(crate) wall_ms_min: f64,
    pub(crate) rt: Option<u64>,
}

/// Connection setup times of one server.
#[derive(Debug, Clone)]
pub(crate) struct SetupRow {
    pub(crate) server: &'static str,
    pub(crate) n: usize,
    pub(crate) first_p50_ms: f64,
    pub(crate) first_p99_ms: f64,
    pub(crate) ready_p50_ms: f64,
    pub(crate) ready_p99_ms: f64,
}

/// Memory per idle connection of one server.
#[derive(Debug, Clone)]
pub(crate) struct MemoryRow {
    pub(crate) server: &'static str,
    pub(crate) what: &'static str,
    pub(crate) conns: usize,
    pub(crate) before_kib: u64,
    pub(crate) after_kib: u64,
    pub(crate) per_conn_kib: f64,
}

/// Many clients signing at once through one server.
#[derive(Debug, Clone)]
pub(crate) struct SignersRow {
    pub(crate) server: &'static str,
    pub(crate) clients: usize,
    pub(crate) ops_each: usize,
    pub(crate) clients_ok: usize,
    pub(crate) errors: usize,
    pub(crate) ops_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// A target of issues 3 and 7.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) measured: String,
    pub(crate) pass: Option<bool>,
}

/// Everything one invocation measured.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) started: String,
    pub(crate) duration_s: f64,
    pub(crate) machine: String,
    pub(crate) versions: Vec<(String, String)>,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) load_samples: Vec<(String, String)>,
    pub(crate) quick: bool,
    pub(crate) ops: Vec<OpRun>,
    pub(crate) reqs: Vec<ReqRun>,
    pub(crate) setup: Vec<SetupRow>,
    pub(crate) memory: Vec<MemoryRow>,
    pub(crate) signers: Vec<SignersRow>,
    pub(crate) targets: Vec<Target>,
    /// p50 of a bare request/reply between two processes over a Unix socket, per 0 ms run.
    pub(crate) floor_p50_ms: Vec<f64>,
    /// Every 0 ms repetition (`ops` holds the median ones): the no-delay targets show each
    /// repetition's ratio too.
    pub(crate) reps0: Vec<Vec<OpRun>>,
}

/// A stack's description for tables.
pub(crate) fn stack_label(id: &str) -> &'static str {
    crate::STACKS
        .iter()
        .find(|s| s.id == id)
        .map_or("?", |s| s.label)
}

fn status_text(s: &Status) -> String {
    match s {
        Status::Ok => "ok".into(),
        Status::Unsupported(w) => format!("unsupported: {w}"),
        Status::Failed(w) => format!("failed: {w}"),
    }
}

fn short_status(s: &Status) -> &'static str {
    match s {
        Status::Ok => "",
        Status::Unsupported(_) => "n/a (unsupported)",
        Status::Failed(_) => "FAILED",
    }
}

fn f(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "–".into()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "–".into(), |v| v.to_string())
}

impl Report {
    /// The median of the socket floor's p50s, in ms.
    pub(crate) fn floor_ms(&self) -> Option<f64> {
        let mut v = self.floor_p50_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// The ratio `f(ours, direct)` in each 0 ms repetition, for `workload` on one thread.
    pub(crate) fn per_rep(
        &self,
        ours: &str,
        direct: &str,
        workload: &str,
        f: impl Fn(&OpRun, &OpRun) -> f64,
    ) -> Vec<f64> {
        fn one<'a>(rep: &'a [OpRun], stack: &str, workload: &str) -> Option<&'a OpRun> {
            rep.iter().find(|r| {
                r.stack == stack
                    && r.workload == workload
                    && r.threads == 1
                    && r.status == Status::Ok
            })
        }
        self.reps0
            .iter()
            .filter_map(|rep| one(rep, ours, workload).zip(one(rep, direct, workload)))
            .map(|(a, b)| f(a, b))
            .collect()
    }

    /// The single-thread run of `stack`/`workload` at `delay`.
    pub(crate) fn find(
        &self,
        stack: &str,
        workload: &str,
        delay: u32,
        threads: usize,
    ) -> Option<&OpRun> {
        self.ops.iter().find(|r| {
            r.stack == stack
                && r.workload == workload
                && r.delay_ms == delay
                && r.threads == threads
        })
    }

    /// The generated part of docs/benchmarks.md.
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Generated by `make bench` (`p11fwd-bench`) on {}{}, in {:.0} s. Machine: {}. \
             Load average (1/5/15 min) before: {}, after: {}.\n",
            self.started,
            if self.quick {
                " (quick run: fewer operations)"
            } else {
                ""
            },
            self.duration_s,
            self.machine,
            self.load_before,
            self.load_after
        );
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(md, "Peers: {}.\n", versions.join(", "));

        let _ = writeln!(md, "### Targets\n");
        let _ = writeln!(md, "| target | measured | result |\n|---|---|---|");
        for t in &self.targets {
            let r = match t.pass {
                Some(true) => "**pass**",
                Some(false) => "**MISSED**",
                None => "n/a",
            };
            let _ = writeln!(md, "| {} | {} | {} |", t.name, t.measured, r);
        }

        let _ = writeln!(
            md,
            "\n![p50 latency per operation and req -new wall time](benchmarks.svg)\n"
        );

        for delay in [10u32, 0] {
            let _ = writeln!(
                md,
                "### Private-key operations, {} ({} one-way, one thread)\n",
                if delay == 0 {
                    "no added delay".to_owned()
                } else {
                    format!("{} ms round trip", 2 * delay)
                },
                if delay == 0 {
                    "0 ms".to_owned()
                } else {
                    format!("{delay} ms")
                }
            );
            let _ = writeln!(
                md,
                "Ratios are operations per second relative to the libp11 engine + `p11-kit-client.so` \
                 stack (p11-kit's remoting guide) at the same delay and (without delay) to SoftHSM \
                 called directly.{}\n",
                if delay == 0 {
                    " Without delay the clients connect to the server's socket directly; round \
                     trips are counted in the 10 ms runs. Each row is the median (by ops/s) of \
                     interleaved repetitions of the whole 0 ms matrix."
                } else {
                    ""
                }
            );
            let _ = writeln!(
                md,
                "| workload | stack | ops/s | p50 ms | p99 ms | round trips/op | key load: round trips, ms | first op: round trips, ms | × libp11+p11-kit | × SoftHSM direct |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for w in crate::WORKLOADS {
                for s in crate::STACKS {
                    let Some(r) = self.find(s.id, w.id, delay, 1) else {
                        continue;
                    };
                    if r.status != Status::Ok {
                        let _ = writeln!(
                            md,
                            "| {} | {} | {} | | | | | | | |",
                            w.label,
                            s.label,
                            short_status(&r.status)
                        );
                        continue;
                    }
                    let rt = r
                        .rt_per_op
                        .or_else(|| self.find(s.id, w.id, 10, 1).and_then(|x| x.rt_per_op));
                    let load_rt = r
                        .load_rt
                        .or_else(|| self.find(s.id, w.id, 10, 1).and_then(|x| x.load_rt));
                    let first_rt = r
                        .first_rt
                        .or_else(|| self.find(s.id, w.id, 10, 1).and_then(|x| x.first_rt));
                    let ratio = |other: Option<&OpRun>| match other {
                        Some(o) if o.status == Status::Ok && o.ops_per_s > 0.0 => {
                            format!("{:.2}", r.ops_per_s / o.ops_per_s)
                        }
                        _ => "–".into(),
                    };
                    let errors = if r.errors > 0 {
                        format!(" ({} errors)", r.errors)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {}{} | {} | {} | {} | {}, {} | {}, {} | {} | {} |",
                        w.label,
                        s.label,
                        f(r.ops_per_s, 0),
                        errors,
                        f(r.p50_ms, 2),
                        f(r.p99_ms, 2),
                        rt.map_or_else(|| "–".into(), |v| f(v, 2)),
                        opt(load_rt),
                        f(r.load_ms, 0),
                        opt(first_rt),
                        f(r.first_ms, 1),
                        ratio(self.find("engine-stock", w.id, delay, 1)),
                        if delay == 0 {
                            ratio(self.find("softhsm", w.id, 0, 1))
                        } else {
                            "–".into()
                        },
                    );
                }
            }
            if delay == 0
                && let Some(floor) = self.floor_ms()
            {
                let _ = writeln!(
                    md,
                    "\nThe socket floor: a bare request → reply of the same size ({} → {} bytes) \
                     between two processes over a Unix socket, nothing done in between, takes \
                     {:.1} µs (p50, median of the runs' p50s: {}). Any remoting design pays it once \
                     per operation on top of the module's own time.",
                    crate::alone::FLOOR_REQUEST,
                    crate::alone::FLOOR_REPLY,
                    floor * 1e3,
                    self.floor_p50_ms
                        .iter()
                        .map(|v| format!("{:.1}", v * 1e3))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            md.push('\n');
        }

        let _ = writeln!(md, "### Threads (ECDSA P-256 signatures)\n");
        let _ = writeln!(
            md,
            "| stack | delay (one-way) | 1 thread ops/s | 8 threads ops/s | speed-up | p50 ms (8 threads) | p99 ms (8 threads) |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for delay in [10u32, 0] {
            for s in crate::STACKS {
                let (Some(one), Some(eight)) = (
                    self.find(s.id, "ec-sign", delay, 1),
                    self.find(s.id, "ec-sign", delay, 8),
                ) else {
                    continue;
                };
                if eight.status != Status::Ok || one.status != Status::Ok {
                    let _ = writeln!(
                        md,
                        "| {} | {delay} ms | {} | {} | | | |",
                        s.label,
                        short_status(&one.status),
                        short_status(&eight.status)
                    );
                    continue;
                }
                let errors = if eight.errors > 0 {
                    format!(" ({} errors)", eight.errors)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    md,
                    "| {} | {delay} ms | {} | {}{} | {} | {} | {} |",
                    s.label,
                    f(one.ops_per_s, 0),
                    f(eight.ops_per_s, 0),
                    errors,
                    f(eight.ops_per_s / one.ops_per_s, 2),
                    f(eight.p50_ms, 2),
                    f(eight.p99_ms, 2)
                );
            }
        }

        let _ = writeln!(
            md,
            "\n### `openssl req -new -key pkcs11:...` (whole process)\n"
        );
        let _ = writeln!(
            md,
            "| stack | delay (one-way) | round trips | wall time median ms | min ms |\n|---|---:|---:|---:|---:|"
        );
        for delay in [10u32, 0] {
            for r in self.reqs.iter().filter(|r| r.delay_ms == delay) {
                if r.status != Status::Ok {
                    let _ = writeln!(
                        md,
                        "| {} | {delay} ms | {} | | |",
                        stack_label(r.stack),
                        short_status(&r.status)
                    );
                    continue;
                }
                let rt = r.rt.or_else(|| {
                    self.reqs
                        .iter()
                        .find(|x| x.stack == r.stack && x.delay_ms == 10)
                        .and_then(|x| x.rt)
                });
                let _ = writeln!(
                    md,
                    "| {} | {delay} ms | {} | {} | {} |",
                    stack_label(r.stack),
                    opt(rt),
                    f(r.wall_ms_median, 1),
                    f(r.wall_ms_min, 1)
                );
            }
        }

        let _ = writeln!(md, "\n### The forwarder alone\n");
        let _ = writeln!(
            md,
            "Connection setup, sequential connections straight to the socket: `connect` to the \
             version byte's answer, and to the RPC `C_Initialize` reply.\n"
        );
        let _ = writeln!(
            md,
            "| server | connections | first reply p50 ms | p99 ms | C_Initialize reply p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|"
        );
        for r in &self.setup {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.server,
                r.n,
                f(r.first_p50_ms, 3),
                f(r.first_p99_ms, 3),
                f(r.ready_p50_ms, 3),
                f(r.ready_p99_ms, 3)
            );
        }
        let _ = writeln!(
            md,
            "\nMemory per idle connection (connected, version negotiated, `C_Initialize` done).\n"
        );
        let _ = writeln!(
            md,
            "| server | measured | idle connections | before KiB | after KiB | per connection KiB |\n|---|---|---:|---:|---:|---:|"
        );
        for r in &self.memory {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.server,
                r.what,
                r.conns,
                r.before_kib,
                r.after_kib,
                f(r.per_conn_kib, 1)
            );
        }
        let _ = writeln!(
            md,
            "\nConcurrent clients: one process per client (`p11fwd-client.so` against either server, \
             its own connection and session), all signing ECDSA P-256 at once, no added delay.\n"
        );
        let _ = writeln!(
            md,
            "| server | clients × signatures | clients that finished | errors | total ops/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.signers {
            let _ = writeln!(
                md,
                "| {} | {} × {} | {} | {} | {} | {} | {} |",
                r.server,
                r.clients,
                r.ops_each,
                r.clients_ok,
                r.errors,
                f(r.ops_per_s, 0),
                f(r.p50_ms, 2),
                f(r.p99_ms, 2)
            );
        }
        if !self.load_samples.is_empty() {
            let _ = writeln!(
                md,
                "\nLoad average when each section started: {}.",
                self.load_samples
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        let failures: Vec<String> = self
            .ops
            .iter()
            .filter(|r| matches!(r.status, Status::Failed(_)))
            .map(|r| {
                format!(
                    "- {} / {} / {} ms / {} threads: {}",
                    r.stack,
                    r.workload,
                    r.delay_ms,
                    r.threads,
                    status_text(&r.status)
                )
            })
            .chain(
                self.reqs
                    .iter()
                    .filter(|r| matches!(r.status, Status::Failed(_)))
                    .map(|r| {
                        format!(
                            "- {} / req -new / {} ms: {}",
                            r.stack,
                            r.delay_ms,
                            status_text(&r.status)
                        )
                    }),
            )
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(md, "\nFailures:\n\n{}", failures.join("\n"));
        }
        md
    }

    /// The chart: p50 latency per operation at 20 ms RTT by workload and stack, and the wall
    /// time of `req -new`.
    pub(crate) fn svg(&self) -> String {
        let colors = [
            "#1b6ca8", "#5fa8d3", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d96a3", "#30343f",
        ];
        let stacks: Vec<&crate::Stack> = crate::STACKS.iter().filter(|s| s.remote()).collect();
        let mut groups: Vec<(String, Vec<(usize, f64)>)> = Vec::new();
        for w in crate::WORKLOADS {
            let bars = stacks
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let r = self.find(s.id, w.id, 10, 1)?;
                    (r.status == Status::Ok).then_some((i, r.p50_ms))
                })
                .collect();
            groups.push((format!("{} (p50)", w.label), bars));
        }
        let bars = stacks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let r = self
                    .reqs
                    .iter()
                    .find(|r| r.stack == s.id && r.delay_ms == 10)?;
                (r.status == Status::Ok).then_some((i, r.wall_ms_median))
            })
            .collect();
        groups.push(("openssl req -new (whole process)".into(), bars));

        let bar_h = 16.0;
        let gap = 28.0;
        let left = 300.0;
        let width = 900.0;
        let plot_w = width - left - 90.0;
        // Signatures and decryptions share one scale; req -new (a whole process) has its own.
        let op_max = groups[..groups.len() - 1]
            .iter()
            .flat_map(|(_, b)| b.iter().map(|(_, v)| *v))
            .fold(1.0f64, f64::max);
        let req_max = groups.last().map_or(1.0, |(_, b)| {
            b.iter().map(|(_, v)| *v).fold(1.0f64, f64::max)
        });
        let mut y = 60.0;
        let mut body = String::new();
        let last = groups.len() - 1;
        for (g, (title, bars)) in groups.iter().enumerate() {
            let max = if g == last { req_max } else { op_max };
            let _ = writeln!(
                body,
                r#"<text x="10" y="{:.0}" font-weight="bold">{}</text>"#,
                y,
                esc(title)
            );
            y += 8.0;
            for (i, v) in bars {
                let w = (v / max * plot_w).max(1.0);
                let _ = writeln!(
                    body,
                    r#"<text x="{:.0}" y="{:.0}" text-anchor="end" font-size="11">{}</text><rect x="{left:.0}" y="{:.0}" width="{w:.1}" height="{:.0}" fill="{}"/><text x="{:.1}" y="{:.0}" font-size="11">{:.1} ms</text>"#,
                    left - 6.0,
                    y + bar_h - 4.0,
                    esc(stacks[*i].label),
                    y,
                    bar_h - 2.0,
                    colors[*i % colors.len()],
                    left + w + 4.0,
                    y + bar_h - 4.0,
                    v
                );
                y += bar_h;
            }
            y += gap;
        }
        let height = y + 10.0;
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="24" font-size="15" font-weight="bold">Latency at 20 ms round trip (10 ms each way), SoftHSM token, one thread</text>
<text x="10" y="42" font-size="11" fill="#555">p50 per operation; openssl req -new: median wall time of the whole process. Shorter is better.</text>
{body}</svg>
"##
        )
    }

    /// The raw numbers.
    pub(crate) fn json(&self) -> String {
        let mut j = String::from("{\n");
        let _ = writeln!(j, "  \"started\": {},", js(&self.started));
        let _ = writeln!(j, "  \"duration_s\": {},", jn(self.duration_s));
        let _ = writeln!(j, "  \"quick\": {},", self.quick);
        let _ = writeln!(j, "  \"machine\": {},", js(&self.machine));
        let _ = writeln!(j, "  \"load_before\": {},", js(&self.load_before));
        let _ = writeln!(j, "  \"load_after\": {},", js(&self.load_after));
        let _ = writeln!(
            j,
            "  \"load_samples\": {{{}}},",
            self.load_samples
                .iter()
                .map(|(k, v)| format!("{}: {}", js(k), js(v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            j,
            "  \"versions\": {{{}}},",
            self.versions
                .iter()
                .map(|(k, v)| format!("{}: {}", js(k), js(v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let ops: Vec<String> = self
            .ops
            .iter()
            .map(|r| {
                format!(
                    "    {{\"stack\": {}, \"workload\": {}, \"delay_ms\": {}, \"threads\": {}, \"status\": {}, \"ops\": {}, \"errors\": {}, \"ops_per_s\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"round_trips_per_op\": {}, \"key_load_round_trips\": {}, \"key_load_ms\": {}, \"first_op_round_trips\": {}, \"first_op_ms\": {}}}",
                    js(r.stack), js(r.workload), r.delay_ms, r.threads, js(&status_text(&r.status)), r.ops, r.errors,
                    jn(r.ops_per_s), jn(r.p50_ms), jn(r.p99_ms),
                    r.rt_per_op.map_or_else(|| "null".into(), jn),
                    r.load_rt.map_or_else(|| "null".into(), |v| v.to_string()),
                    jn(r.load_ms),
                    r.first_rt.map_or_else(|| "null".into(), |v| v.to_string()),
                    jn(r.first_ms)
                )
            })
            .collect();
        let _ = writeln!(j, "  \"operations\": [\n{}\n  ],", ops.join(",\n"));
        let reqs: Vec<String> = self
            .reqs
            .iter()
            .map(|r| {
                format!(
                    "    {{\"stack\": {}, \"delay_ms\": {}, \"status\": {}, \"runs\": {}, \"wall_ms_median\": {}, \"wall_ms_min\": {}, \"round_trips\": {}}}",
                    js(r.stack), r.delay_ms, js(&status_text(&r.status)), r.runs, jn(r.wall_ms_median), jn(r.wall_ms_min),
                    r.rt.map_or_else(|| "null".into(), |v| v.to_string())
                )
            })
            .collect();
        let _ = writeln!(j, "  \"req_new\": [\n{}\n  ],", reqs.join(",\n"));
        let setup: Vec<String> = self
            .setup
            .iter()
            .map(|r| {
                format!(
                    "    {{\"server\": {}, \"connections\": {}, \"first_reply_p50_ms\": {}, \"first_reply_p99_ms\": {}, \"initialize_reply_p50_ms\": {}, \"initialize_reply_p99_ms\": {}}}",
                    js(r.server), r.n, jn(r.first_p50_ms), jn(r.first_p99_ms), jn(r.ready_p50_ms), jn(r.ready_p99_ms)
                )
            })
            .collect();
        let _ = writeln!(j, "  \"connection_setup\": [\n{}\n  ],", setup.join(",\n"));
        let floor: Vec<String> = self.floor_p50_ms.iter().map(|v| jn(*v)).collect();
        let _ = writeln!(j, "  \"socket_floor_p50_ms\": [{}],", floor.join(", "));
        let mem: Vec<String> = self
            .memory
            .iter()
            .map(|r| {
                format!(
                    "    {{\"server\": {}, \"measured\": {}, \"connections\": {}, \"before_kib\": {}, \"after_kib\": {}, \"per_connection_kib\": {}}}",
                    js(r.server), js(r.what), r.conns, r.before_kib, r.after_kib, jn(r.per_conn_kib)
                )
            })
            .collect();
        let _ = writeln!(j, "  \"idle_memory\": [\n{}\n  ],", mem.join(",\n"));
        let sig: Vec<String> = self
            .signers
            .iter()
            .map(|r| {
                format!(
                    "    {{\"server\": {}, \"clients\": {}, \"signatures_each\": {}, \"clients_finished\": {}, \"errors\": {}, \"ops_per_s\": {}, \"p50_ms\": {}, \"p99_ms\": {}}}",
                    js(r.server), r.clients, r.ops_each, r.clients_ok, r.errors, jn(r.ops_per_s), jn(r.p50_ms), jn(r.p99_ms)
                )
            })
            .collect();
        let _ = writeln!(j, "  \"concurrent_signers\": [\n{}\n  ],", sig.join(",\n"));
        let targets: Vec<String> = self
            .targets
            .iter()
            .map(|t| {
                format!(
                    "    {{\"target\": {}, \"measured\": {}, \"pass\": {}}}",
                    js(&t.name),
                    js(&t.measured),
                    t.pass.map_or_else(|| "null".into(), |p| p.to_string())
                )
            })
            .collect();
        let _ = writeln!(j, "  \"targets\": [\n{}\n  ]", targets.join(",\n"));
        j.push_str("}\n");
        j
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn js(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn jn(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "null".into()
    }
}

//! Closed-loop load: tasks that call as fast as answers come, measured in
//! windows and slices, with the CPU each process used.

use crate::*;

pub(crate) type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// One operation: task number and iteration in, per-step nanoseconds out.
pub(crate) type Op = Arc<dyn Fn(usize, u64) -> BoxFut<Result<[u64; 4], Status>> + Send + Sync>;

/// What a closed-loop run measured.
pub(crate) struct Load {
    pub(crate) whole: Samples,
    pub(crate) steps: [Samples; 4],
    /// The samples of `whole` again, by the slice of the window in which
    /// each operation ended (empty unless the run was sliced).
    pub(crate) slices: Vec<Samples>,
    /// When the measurement window opened.
    pub(crate) window_start: Instant,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) secs: f64,
    pub(crate) cpu: Cpu,
}

impl Load {
    pub(crate) fn rate(&self) -> f64 {
        self.whole.len() as f64 / self.secs
    }
}

/// `conc` tasks each run `op` back to back for warm-up + measurement; only
/// operations that start and end inside the measurement window count.
pub(crate) async fn closed_loop(conc: usize, t: Timing, pid: Option<u32>, op: Op) -> Load {
    closed_loop_sliced(conc, t, None, pid, op).await
}

/// The measurement window cut into slices of `slice` (the last one may be
/// shorter): each slice's start and end, from the window's start.
pub(crate) fn slice_bounds(measure: Duration, slice: Duration) -> Vec<(Duration, Duration)> {
    let mut out = Vec::new();
    let mut from = Duration::ZERO;
    while from < measure {
        let to = (from + slice).min(measure);
        out.push((from, to));
        from = to;
    }
    out
}

/// [`closed_loop`], with each counted operation also filed under the
/// [`slice_bounds`] slice in which it ended. As only operations that start
/// and end inside the window count, the first and the last slice each miss
/// up to `conc` operations (those under way at the window's edges), so
/// comparing the two is fair.
pub(crate) async fn closed_loop_sliced(
    conc: usize,
    t: Timing,
    slice: Option<Duration>,
    pid: Option<u32>,
    op: Op,
) -> Load {
    let start = Instant::now();
    let m0 = start + t.warmup;
    let m1 = m0 + t.measure;
    let bounds = slice.map_or_else(Vec::new, |s| slice_bounds(t.measure, s));
    let slice_ns = slice.map_or(1, |s| s.as_nanos().max(1));
    let cpu = cpu_window(pid, m0, m1);
    let mut handles = Vec::with_capacity(conc);
    for task in 0..conc {
        let op = op.clone();
        let nslices = bounds.len();
        handles.push(tokio::spawn(async move {
            let mut whole = Vec::new();
            let mut slices: Vec<Vec<u64>> = vec![Vec::new(); nslices];
            let mut steps: [Vec<u64>; 4] = Default::default();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut i = 0u64;
            loop {
                let a = Instant::now();
                if a >= m1 {
                    break;
                }
                let r = op(task, i).await;
                i += 1;
                let b = Instant::now();
                match r {
                    Ok(s) => {
                        if a >= m0 && b <= m1 {
                            let ns = (b - a).as_nanos() as u64;
                            whole.push(ns);
                            if nslices > 0 {
                                let k = ((b - m0).as_nanos() / slice_ns) as usize;
                                slices[k.min(nslices - 1)].push(ns);
                            }
                            for (k, v) in s.iter().enumerate() {
                                if *v > 0 {
                                    steps[k].push(*v);
                                }
                            }
                        }
                    }
                    Err(s) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                        // Do not spin on a failing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (whole, slices, steps, errors, first_error)
        }));
    }
    let mut load = Load {
        whole: Samples::default(),
        steps: Default::default(),
        slices: bounds.iter().map(|_| Samples::default()).collect(),
        window_start: m0,
        errors: 0,
        first_error: None,
        secs: t.measure.as_secs_f64(),
        cpu: Cpu::default(),
    };
    for h in handles {
        match h.await {
            Ok((w, sl, s, e, f)) => {
                load.whole.extend(w);
                for (k, v) in sl.into_iter().enumerate() {
                    load.slices[k].extend(v);
                }
                for (k, v) in s.into_iter().enumerate() {
                    load.steps[k].extend(v);
                }
                load.errors += e;
                if load.first_error.is_none() {
                    load.first_error = f;
                }
            }
            Err(e) => {
                load.errors += 1;
                load.first_error.get_or_insert(format!("task failed: {e}"));
            }
        }
    }
    load.cpu = cpu.await.unwrap_or_default();
    load.whole.finish();
    for s in load.steps.iter_mut().chain(load.slices.iter_mut()) {
        s.finish();
    }
    load
}

/// CPU used over a window, in % of one core (200 % = both cores of this
/// machine), by the server and by the bench itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) server: Option<f64>,
    pub(crate) bench: Option<f64>,
}

impl Cpu {
    pub(crate) fn cell(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        format!("{}/{}", f(self.server), f(self.bench))
    }

    pub(crate) fn add_json(&self, j: &mut Value) {
        j["server_cpu_pct"] = self.server.map_or(Value::Null, |v| json!(round1(v)));
        j["bench_cpu_pct"] = self.bench.map_or(Value::Null, |v| json!(round1(v)));
    }
}

/// User + system CPU seconds of a process (`self` or a pid), from /proc.
pub(crate) fn cpu_secs(who: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// Measures [`Cpu`] between `m0` and `m1`.
pub(crate) fn cpu_window(
    pid: Option<u32>,
    m0: Instant,
    m1: Instant,
) -> tokio::task::JoinHandle<Cpu> {
    tokio::spawn(async move {
        let sample = || (pid.and_then(|p| cpu_secs(&p.to_string())), cpu_secs("self"));
        tokio::time::sleep_until(m0.into()).await;
        let (s0, b0) = sample();
        tokio::time::sleep_until(m1.into()).await;
        let (s1, b1) = sample();
        let secs = (m1 - m0).as_secs_f64();
        let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs * 100.0);
        Cpu {
            server: pct(s0, s1),
            bench: pct(b0, b1),
        }
    })
}

pub(crate) fn elapsed_ns(a: Instant) -> u64 {
    (a.elapsed().as_nanos() as u64).max(1)
}

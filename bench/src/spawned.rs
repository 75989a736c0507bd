//! The server under test: a `backchannel` process the bench starts, on a
//! temporary data directory or a fresh PostgreSQL database.

use crate::*;

/// A server the bench started; stopped (and its database dropped) on drop.
pub(crate) struct Spawned {
    pub(crate) child: Option<Child>,
    pub(crate) pid: u32,
    pub(crate) data_dir: PathBuf,
    pub(crate) db: Option<backchannel_testkit::TempDb>,
    pub(crate) warnings: Arc<AtomicUsize>,
    pub(crate) tail: Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    pub(crate) fn start(
        bin: &Path,
        admin_token: &str,
        database_url: Option<&str>,
    ) -> Result<(Spawned, String)> {
        Spawned::start_with(bin, admin_token, database_url, false)
    }

    /// With `design_limits`, the server keeps the default per-party limits
    /// (the `abuse` scenario); otherwise they are off, as the bench is one
    /// party calling as fast as the server takes it.
    pub(crate) fn start_with(
        bin: &Path,
        admin_token: &str,
        database_url: Option<&str>,
        design_limits: bool,
    ) -> Result<(Spawned, String)> {
        if !bin.exists() {
            return Err(format!(
                "server binary {} not found: run `cargo build --release` first, or pass --server-bin",
                bin.display()
            )
            .into());
        }
        let data_dir = std::env::temp_dir().join(format!(
            "backchannel-bench-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&data_dir)?;
        let db = match database_url {
            Some(url) => {
                let db = backchannel_testkit::TempDb::create(url, "bc_bench")?;
                progress(format!("PostgreSQL database {} created", db.name));
                Some(db)
            }
            None => None,
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--log-format")
            .arg("json")
            .env("BACKCHANNEL_ADMIN_TOKEN", admin_token)
            // The bench is one party sending as fast as the server takes
            // it, and holding thousands of subscriptions: no per-party
            // limits (environment variables, which a binary from before
            // the limits ignores).
            .env("RUST_LOG", "info")
            .env_remove("BACKCHANNEL_DATABASE_URL")
            .env_remove("BACKCHANNEL_LISTEN")
            .env_remove("BACKCHANNEL_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(db) = &db {
            cmd.arg("--database-url").arg(&db.url);
        }
        if !design_limits {
            cmd.env("BACKCHANNEL_RATE_LIMIT", "0")
                .env("BACKCHANNEL_MAX_SUBSCRIPTIONS_PER_PARTY", "1000000");
        }
        // The server dies with the bench, however the bench ends.
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let warnings = Arc::new(AtomicUsize::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let warnings = warnings.clone();
            let tail = tail.clone();
            // Drains the server's log for as long as it runs.
            std::thread::spawn(move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if v["message"] == "serving"
                        && let Some(tx) = addr_tx.take()
                    {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                    if matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
                        warnings.fetch_add(1, Ordering::Relaxed);
                        eprintln!("[server] {line}");
                    }
                    let mut t = tail.lock().unwrap();
                    if t.len() >= 50 {
                        t.remove(0);
                    }
                    t.push(line);
                }
            });
        }
        let mut spawned = Spawned {
            child: Some(child),
            pid,
            data_dir,
            db,
            warnings,
            tail,
        };
        match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) if !addr.is_empty() => Ok((spawned, addr)),
            _ => {
                spawned.stop();
                Err(format!(
                    "the server did not start; its last log lines: {:#?}",
                    spawned.tail.lock().unwrap()
                )
                .into())
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child process, which has not been reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        // The database goes after the server that used it.
        self.db.take();
    }
}

/// The server's resident memory in KiB, if it is a local process we know.
pub(crate) fn rss_kib(pid: Option<u32>) -> Option<u64> {
    backchannel_testkit::rss_kib(pid?)
}

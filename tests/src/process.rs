//! The built binaries as child processes, with their log lines readable.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A running binary; killed on drop if still running.
pub struct Service {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Service {
    /// Starts `binary` with `args` and `env` (on top of a clean environment for
    /// the variables the product reads), JSON logs on stderr.
    pub fn start(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(crate::binary(binary));
        command.args(args);
        for name in [
            "DATABASE_URL",
            "AMQP_URL",
            "AMQP_PREFIX",
            "CLERK_WEBHOOK_SECRET",
            "INGRESS_ADDR",
            "INGRESS_OPS_ADDR",
            "WORKER_OPS_ADDR",
            "LOG_FORMAT",
            "RUST_LOG",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            command.env_remove(name);
        }
        command
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            // Ops listeners on free ports, so binaries can run side by side.
            .env("INGRESS_OPS_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn binary");
        let stderr = child.stderr.take().expect("stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// `worker run` against a test database and broker prefix, its ops
    /// listener on a free port; `extra` adds or overrides variables.
    pub fn worker_run(database_url: &str, prefix: &str, extra: &[(&str, &str)]) -> Self {
        let amqp_url = crate::amqp_url();
        let mut env = vec![
            ("DATABASE_URL", database_url),
            ("AMQP_URL", amqp_url.as_str()),
            ("AMQP_PREFIX", prefix),
            ("WORKER_OPS_ADDR", "127.0.0.1:0"),
        ];
        env.extend_from_slice(extra);
        Self::start("worker", &["run"], &env)
    }

    /// The `ingress` binary against a test database and broker prefix, on
    /// free ports; `extra` adds or overrides variables. Returns once it
    /// listens, with its public and ops addresses.
    pub fn ingress_run(
        database_url: &str,
        prefix: &str,
        secret: &str,
        extra: &[(&str, &str)],
    ) -> (Self, String, String) {
        let amqp_url = crate::amqp_url();
        let mut env = vec![
            ("DATABASE_URL", database_url),
            ("AMQP_URL", amqp_url.as_str()),
            ("AMQP_PREFIX", prefix),
            ("CLERK_WEBHOOK_SECRET", secret),
            ("INGRESS_ADDR", "127.0.0.1:0"),
        ];
        env.extend_from_slice(extra);
        let mut ingress = Self::start("ingress", &[], &env);
        let listening = ingress.wait_for_line("ingress listening", Duration::from_secs(30));
        let log: serde_json::Value = serde_json::from_str(&listening).expect("JSON log line");
        let field = |name: &str| {
            log[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {listening}"))
                .to_owned()
        };
        let (addr, ops_addr) = (field("addr"), field("ops_addr"));
        (ingress, addr, ops_addr)
    }

    /// The process's peak resident memory so far, in bytes (Linux).
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM line");
        kib * 1024
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, deadline: Duration) -> String {
        let until = Instant::now() + deadline;
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?} within {deadline:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, then returns its status and every line
    /// it wrote to stderr.
    pub fn wait_exit(&mut self, deadline: Duration) -> (ExitStatus, String) {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The reader thread ends when the pipe closes.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return (status, self.seen.join("\n"));
            }
            assert!(
                Instant::now() < until,
                "process still running after {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

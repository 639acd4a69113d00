//! The three-node RabbitMQ cluster of `scripts/rabbitmq-cluster`, beside the
//! machine's own broker: started by the script when it is not running
//! (`scripts/check` starts it in a step of its own before the tests), left
//! running afterwards like the other test servers. A node a test stops is
//! started again when its [`StoppedNode`] is dropped, also when the test fails.

use std::{path::PathBuf, process::Command};

/// The nodes, in the order of [`Cluster::url`].
pub const NODES: [&str; 3] = ["clerk-a", "clerk-b", "clerk-c"];

/// The cluster, running.
pub struct Cluster {
    /// `AMQP_URL` listing the three nodes.
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster")
}

/// Runs the script with `args`; panics with its output when it fails.
fn run(args: &[&str]) -> String {
    let output = Command::new(script())
        .args(args)
        .output()
        .expect("run scripts/rabbitmq-cluster");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/rabbitmq-cluster {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

impl Cluster {
    /// Makes sure the three nodes run clustered (the script is idempotent).
    pub fn ensure() -> Self {
        run(&["start"]);
        Self {
            url: run(&["url"]).trim().to_owned(),
        }
    }

    /// The nodes' URLs, in the script's order (clerk-a, clerk-b, clerk-c).
    pub fn node_urls(&self) -> Vec<String> {
        self.url.split(',').map(str::to_owned).collect()
    }

    /// Two `AMQP_URL` lists of the three nodes: one starting with `node`
    /// (e.g. `clerk-b`), one starting with the node after it.
    pub fn lists_starting_with(&self, node: &str) -> (String, String) {
        let urls = self.node_urls();
        let first = NODES
            .iter()
            .position(|n| *n == node)
            .unwrap_or_else(|| panic!("unknown node {node}"));
        let rotated = |start: usize| {
            (0..urls.len())
                .map(|i| urls[(start + i) % urls.len()].as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        (rotated(first), rotated(first + 1))
    }

    /// The node (e.g. `clerk-b`) leading quorum queue `queue`.
    pub fn leader(&self, queue: &str) -> String {
        run(&["leader", queue]).trim().to_owned()
    }

    /// Stops `node` (waiting until it has stopped); it starts again when the
    /// returned guard is dropped or [`StoppedNode::restart`]ed.
    pub fn stop(&self, node: &str) -> StoppedNode {
        run(&["stop", node]);
        StoppedNode { restarted: false }
    }
}

/// A node stopped by a test.
pub struct StoppedNode {
    restarted: bool,
}

impl StoppedNode {
    /// Starts the node again and waits until the cluster is whole.
    pub fn restart(mut self) {
        run(&["start"]);
        self.restarted = true;
    }
}

impl Drop for StoppedNode {
    fn drop(&mut self) {
        if !self.restarted {
            let _ = Command::new(script()).arg("start").output();
        }
    }
}

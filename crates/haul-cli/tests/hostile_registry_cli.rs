//! A hostile registry against the `haul` binary, where what matters is the process as a whole:
//! its memory.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use test_registry::{FakeAuth, FakeRegistry, FakeRegistryOptions, Fault};

/// What `haul pull --all-tags` may use at its peak while refusing an endless tag list. The bounded
/// list is 16 MiB of JSON and the tags parsed from it; without bounds the process grew by
/// gigabytes in seconds.
const PEAK_RSS_LIMIT_KIB: u64 = 256 * 1024;

/// A bound on a test that would otherwise run until the machine ran out of memory.
const PATIENCE: Duration = Duration::from_secs(120);

/// The peak resident set (`VmHWM`) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for `child` to exit while sampling its peak RSS; kills it and fails once the peak passes
/// `limit_kib`. Returns the last peak seen.
async fn wait_bounded(child: &mut Child, limit_kib: u64) -> u64 {
    let start = Instant::now();
    let mut peak = 0;
    loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if peak > limit_kib || start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "haul grew to {} MiB in {:.1} s without giving up",
                peak / 1024,
                start.elapsed().as_secs_f64()
            );
        }
        if child.try_wait().unwrap().is_some() {
            return peak;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_link_pagination_loop_is_refused() {
    let registry = FakeRegistry::start(FakeRegistryOptions {
        auth: FakeAuth::None,
    })
    .await
    .unwrap();
    registry.fault(
        "/tags/list",
        Fault::EndlessTagPages {
            tags_per_page: 10_000,
            tag_len: 128,
        },
    );
    let env = Env::new();
    let mut child = env
        .haul_process()
        .args([
            "pull",
            "--all-tags",
            &format!("{}/team/endless", registry.host()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let peak = wait_bounded(&mut child, PEAK_RSS_LIMIT_KIB).await;
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "peak RSS {} MiB after {} tag list pages",
        peak / 1024,
        registry.count("GET", "/tags/list")
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("team/endless"), "{stderr}");
    assert!(stderr.contains("tag list"), "{stderr}");
    assert!(
        stderr.contains("hint: the registry's tag list is broken or hostile"),
        "{stderr}"
    );
    assert!(
        registry.count("GET", "/tags/list") <= 20,
        "stopped within the limits"
    );
}

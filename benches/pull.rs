//! Pull throughput: a ~300 MB multi-layer image from the loopback registry through the
//! CRI (PullImage: download, verify, extract, commit) next to the raw time curl takes to
//! download the same blobs. Run with `cargo bench --bench pull`.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use test_support::{Compression, Daemon, ImageBuilder, Layer, Registry, TarEntry};

const LAYERS: usize = 6;
const FILES_PER_LAYER: usize = 6;
const FILE_SIZE: usize = 8 << 20;
const RUNS: usize = 3;

/// Incompressible bytes (xorshift), so the compressed size is the real transfer size.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    if !test_support::is_root() {
        eprintln!("pull bench: needs root (the daemon mounts and makes cgroups); skipped");
        return;
    }
    let registry = Registry::start().await.expect("registry");
    let mut builder = ImageBuilder::oci();
    for layer in 0..LAYERS {
        let entries = (0..FILES_PER_LAYER)
            .map(|f| {
                TarEntry::file(
                    format!("data/l{layer}/f{f}"),
                    noise((layer * 100 + f) as u64 + 1, FILE_SIZE),
                )
            })
            .collect::<Vec<_>>();
        builder = builder.layer(Layer::new(entries), Compression::Gzip);
    }
    let image = builder.build();
    let pushed = registry
        .push("bench/big", "latest", &image)
        .await
        .expect("push");
    let total: u64 = image.layers.iter().map(|l| l.blob.len() as u64).sum();
    let mb = total as f64 / (1 << 20) as f64;

    // Raw download with curl, the same blobs one after another and all at once.
    let urls: Vec<String> = image
        .layer_digests()
        .iter()
        .map(|d| format!("http://{}/v2/bench/big/blobs/{d}", registry.addr()))
        .collect();
    let mut curl_seq = Vec::new();
    let mut curl_par = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        for url in &urls {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", url])
                .status()
                .expect("curl")
                .success();
            assert!(ok, "curl {url}");
        }
        curl_seq.push(start.elapsed());
        let start = Instant::now();
        let mut args = vec!["-sfZ".to_string()];
        for url in &urls {
            args.extend(["-o".to_string(), "/dev/null".to_string(), url.clone()]);
        }
        assert!(
            Command::new("curl")
                .args(&args)
                .status()
                .expect("curl")
                .success()
        );
        curl_par.push(start.elapsed());
    }

    let daemon = Daemon::builder(env!("CARGO_BIN_EXE_cri-mesos"))
        .arg(format!("--insecure_registries={}", registry.addr()))
        .start()
        .await
        .expect("daemon");
    let mut client = daemon.image_client().await.expect("client");
    let spec = Some(cri::ImageSpec {
        image: pushed.reference(),
        ..Default::default()
    });
    let mut pulls = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        client
            .pull_image(cri::PullImageRequest {
                image: spec.clone(),
                ..Default::default()
            })
            .await
            .expect("pull");
        pulls.push(start.elapsed());
        client
            .remove_image(cri::RemoveImageRequest {
                image: spec.clone(),
            })
            .await
            .expect("remove");
    }

    let rate = |d: Duration| mb / d.as_secs_f64();
    let (p, s, c) = (median(pulls), median(curl_seq), median(curl_par));
    println!("image: {LAYERS} layers, {mb:.0} MiB compressed (gzip), median of {RUNS}");
    println!(
        "cri-mesos PullImage (download+verify+extract): {:>7.2}s {:>8.1} MiB/s",
        p.as_secs_f64(),
        rate(p)
    );
    println!(
        "curl, blobs one by one (download only):        {:>7.2}s {:>8.1} MiB/s",
        s.as_secs_f64(),
        rate(s)
    );
    println!(
        "curl, blobs in parallel (download only):       {:>7.2}s {:>8.1} MiB/s",
        c.as_secs_f64(),
        rate(c)
    );
}

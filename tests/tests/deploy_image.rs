//! `deploy/build-image.sh` end to end: it builds berth's image from the debug binaries (debug
//! info stripped) without any network, and the image runs `berth` and `berth-runc`, so every
//! library they load made it in. `deploy/Containerfile` needs Docker Hub and cannot be tested
//! here; this is the path CI exercises.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use berth_tests::privileged::{in_ci, require_root};
use serde_json::Value;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Upper bounds, so a hung podman fails the test instead of stalling the suite. A run normally
/// takes well under a second, but podman 4.3 has been seen here to wait out its 20 s conmon
/// timeout after every container exit.
const BUILD_TIMEOUT_SECS: u32 = 600;
const PODMAN_TIMEOUT_SECS: u32 = 300;

/// This sandbox has no CAP_SYS_RESOURCE: podman's default RLIMIT_NOFILE (2^20) would fail in
/// setrlimit, so keep the limits at or below ours (as runtime_oci.rs does).
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Podman with its whole state (storage, run root, locks, exit files) in a private directory,
/// so the test neither sees nor leaves anything in the host's containers and images. It is
/// passed through the environment (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF), which the
/// podman inside `build-image.sh` reads too.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // cgroupfs and file events: no systemd or journald needed, as in runtime_oci.rs.
        std::fs::write(
            root.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\ntmp_dir = \"{}\"\n\
                 [containers]\nlog_driver = \"k8s-file\"\nnetns = \"none\"\n",
                root.join("libpod").display()
            ),
        )
        .expect("containers.conf");
        let podman = Podman { dir };
        // overlay keeps one copy of the image's layer (vfs copies it again for each container);
        // vfs works wherever overlay cannot be mounted (nested in another overlay, say).
        for driver in ["overlay", "vfs"] {
            podman.write_storage_conf(driver);
            let out = podman.run(&["images"]);
            if out.status.success() {
                eprintln!("podman storage driver: {driver}");
                return podman;
            }
            eprintln!(
                "podman storage driver {driver} unusable: {}",
                text(&out.stderr)
            );
            let _ = std::fs::remove_dir_all(podman.dir.path().join("storage"));
        }
        panic!("podman: neither overlay nor vfs storage works here");
    }

    fn write_storage_conf(&self, driver: &str) {
        let root = self.dir.path();
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"{driver}\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.join("storage").display(),
                root.join("run").display()
            ),
        )
        .expect("storage.conf");
    }

    /// `program args` under `timeout`, with this podman's configuration in the environment.
    fn command(&self, timeout_secs: u32, program: &str) -> Command {
        let root = self.dir.path();
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", &timeout_secs.to_string(), program])
            .env("CONTAINERS_CONF", root.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
            // build-image.sh's temporary rootfs goes here too, removed with the rest.
            .env("TMPDIR", root);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(PODMAN_TIMEOUT_SECS, "podman")
            .args(args)
            .output()
            .expect("running podman")
    }

    /// `podman args`, which must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let start = Instant::now();
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}; 124 is the timeout):\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        eprintln!("podman {args:?}: {:.1?}", start.elapsed());
        text(&out.stdout)
    }
}

/// Removes the image when the test ends, passed or failed (declared after the `Podman` it uses,
/// so it drops first, before that store's directory goes).
struct RemoveImage<'a> {
    podman: &'a Podman,
    tag: String,
}

impl Drop for RemoveImage<'_> {
    fn drop(&mut self) {
        let out = self.podman.run(&["rmi", "-f", &self.tag]);
        if !out.status.success() {
            eprintln!("podman rmi -f {}: {}", self.tag, text(&out.stderr));
        }
    }
}

/// `berth` and `berth-runc` from `from` with their debug info stripped, in `to`: about 110 MB
/// instead of 690 MB, which the build otherwise stores two or three times over (context, layer,
/// commit) on disks that CI machines share with the build. Code and data, the embedded kernel
/// object included, are unchanged. Without `strip` the test packs the binaries as they are.
fn without_debug_info(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("binary directory");
    for name in ["berth", "berth-runc"] {
        let status = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(to.join(name))
            .arg(from.join(name))
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!(
                "strip failed or missing ({status:?}): packing the binaries in {from:?} as they are"
            );
            return from.into();
        }
    }
    to.into()
}

fn podman_installed() -> bool {
    if Command::new("podman").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        !in_ci(),
        "podman missing: `cargo xtask setup` installs it (CI=true: this test must not skip)"
    );
    eprintln!("SKIPPED: podman not installed (`cargo xtask setup` installs it)");
    false
}

#[test]
fn image_builds_offline_and_runs() {
    if !require_root("image_builds_offline_and_runs") || !podman_installed() {
        return;
    }
    let start = Instant::now();
    // The binaries the other tests use: target/<profile>/ (or next to $BERTH_BIN).
    let berth = berth_tests::agent::berth_bin().expect("berth binary");
    let runc = berth_tests::bundle::runc_bin().expect("berth-runc binary");
    let debug_dir = runc.parent().expect("binary directory");
    let out = Command::new(&berth)
        .arg("--version")
        .output()
        .expect("berth --version");
    assert!(out.status.success(), "berth --version: {out:?}");
    let version_line = text(&out.stdout).trim().to_owned(); // "berth 0.1.0"
    let version = version_line
        .strip_prefix("berth ")
        .unwrap_or_else(|| panic!("unexpected `berth --version`: {version_line:?}"))
        .to_owned();

    let podman = Podman::new();
    let binary_dir = without_debug_info(debug_dir, &podman.dir.path().join("bin"));
    let tag = format!(
        "localhost/berth-test:deploy-{}",
        berth_tests::unique_suffix()
    );
    let _remove = RemoveImage {
        podman: &podman,
        tag: tag.clone(),
    };

    // Build. The script runs its own `podman build --network=none`; the private store above
    // holds no base image, so a FROM that needed pulling would fail here rather than pass.
    let script = Path::new(WORKSPACE).join("deploy/build-image.sh");
    let build_start = Instant::now();
    let out = podman
        .command(BUILD_TIMEOUT_SECS, "bash")
        .arg(&script)
        .arg("--binary-dir")
        .arg(&binary_dir)
        .args(["--tag", &tag])
        .output()
        .expect("running build-image.sh");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "build-image.sh failed ({}; 124 is the timeout):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    eprintln!("build-image.sh: {:.1?}\n{stdout}", build_start.elapsed());
    assert!(
        stdout.contains("podman save") && stdout.contains("ctr -n k8s.io images import -"),
        "build-image.sh says how to load the image into containerd: {stdout}"
    );
    assert!(
        !stderr.contains("Trying to pull") && !stdout.contains("Trying to pull"),
        "the build pulled something:\n{stdout}\n{stderr}"
    );

    // The image's configuration: labels, entrypoint, PATH, and a single layer (FROM scratch,
    // no base image underneath).
    let inspect: Value =
        serde_json::from_str(&podman.ok(&["image", "inspect", &tag])).expect("inspect JSON");
    let image = &inspect[0];
    let config = &image["Config"];
    assert_eq!(config["Labels"]["org.opencontainers.image.title"], "berth");
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        version.as_str()
    );
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/berth"])
    );
    let env = config["Env"].as_array().expect("Env");
    assert!(
        env.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.starts_with("PATH=") && e.contains("/usr/local/bin"))),
        "PATH finds /usr/local/bin (berth.yaml runs `berth agent` by name): {env:?}"
    );
    let layers = image["RootFS"]["Layers"].as_array().expect("RootFS.Layers");
    assert_eq!(layers.len(), 1, "one layer on scratch: {layers:?}");
    let size = image["Size"].as_u64().expect("Size");
    eprintln!("image {tag}: {} MiB", size / (1024 * 1024));

    // Run it, without network. Each run proves the loader and every library are in the image.
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--network=none"];
        all.extend(ULIMITS);
        all.extend(args);
        podman.ok(&all)
    };
    let out = run(&[&tag, "--version"]);
    assert!(
        out.contains(&version_line),
        "berth --version in the image: {out}"
    );
    let out = run(&[&tag, "agent", "--help"]);
    assert!(out.contains("--kubeconfig"), "berth agent --help: {out}");
    let out = run(&[
        "--entrypoint",
        "/usr/local/bin/berth-runc",
        &tag,
        "--version",
    ]);
    assert!(
        out.contains(&format!("berth-runc {version}")),
        "berth-runc --version in the image: {out}"
    );

    eprintln!("image_builds_offline_and_runs: {:.1?}", start.elapsed());
}

//! Boards with simulated hardware: identity resolution over temporary `/dev`, udev and sysfs
//! trees; real `agentctl board` processes contending for leases; a board simulator on a real pty
//! whose power is switched by a fake `mbpoll` that records its arguments.

// Test helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use runner_agent_tests::support::agentctl;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runner_agent::boards::identity::{resolve, Device, Resolution, Roots, Watcher};
use runner_agent::config::{Board, Console, SerialIdentity};

/// Poll `check` until it returns `Some`, or fail after `secs` seconds.
fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Identity resolution over temporary trees.

fn touch(path: &Path) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, b"").expect("touch");
}

#[test]
fn by_id_link_is_found_followed_when_moved_and_missing_when_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dir.path().join("dev");
    touch(&dev.join("ttyUSB0"));
    touch(&dev.join("ttyUSB3"));
    let by_id = dev.join("serial/by-id/usb-FTDI_FT232R_A10K1234-if00-port0");
    fs::create_dir_all(by_id.parent().expect("parent")).expect("mkdir");
    symlink("../../ttyUSB0", &by_id).expect("symlink");
    let identity = SerialIdentity::Path(by_id.clone());
    let roots = Roots {
        dev: dev.clone(),
        udev_data: dir.path().join("udev"),
        sys: dir.path().join("sys"),
    };

    assert_eq!(
        resolve(&identity, "rk", &roots),
        Resolution::Found(Device {
            node: dev.join("ttyUSB0"),
            stable: by_id.clone()
        })
    );

    let board = Board {
        name: "rk".to_owned(),
        profile: None,
        arch: None,
        labels: Vec::new(),
        console: Some(Console {
            identity: identity.clone(),
            baud: 1_500_000,
        }),
        power: None,
        boot_prompt: None,
        tftp_dir: None,
        net_iface: None,
        dtb: None,
        env: Default::default(),
        jobs: Default::default(),
    };
    let mut watcher = Watcher::new(&[board], roots.clone());
    assert_eq!(
        watcher.rescan().len(),
        1,
        "the first scan reports every device"
    );
    assert!(watcher.rescan().is_empty(), "nothing changed");

    // Re-plugged: the same adapter is now ttyUSB3.
    fs::remove_file(&by_id).expect("rm");
    symlink("../../ttyUSB3", &by_id).expect("symlink");
    let changes = watcher.rescan();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].after.device().map(|device| device.node.clone()),
        Some(dev.join("ttyUSB3"))
    );

    // Unplugged.
    fs::remove_file(&by_id).expect("rm");
    let changes = watcher.rescan();
    assert_eq!(changes.len(), 1);
    let problem = changes[0].after.problem().expect("missing is a problem");
    assert!(problem.contains(&by_id.display().to_string()), "{problem}");
    assert!(problem.contains("does not resolve"), "{problem}");
}

/// A tty as udev would have recorded it.
fn udev_tty(root: &Path, name: &str, minor: u32, props: &[(&str, &str)], links: &[&str]) {
    let sys = root.join("sys/class/tty").join(name);
    fs::create_dir_all(&sys).expect("mkdir");
    fs::write(sys.join("dev"), format!("188:{minor}\n")).expect("dev");
    let mut data = String::from("I:123456\n");
    for link in links {
        data.push_str(&format!("S:{link}\n"));
        let path = root.join("dev").join(link);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let _ = fs::remove_file(&path);
        symlink(root.join("dev").join(name), &path).expect("symlink");
    }
    for (key, value) in props {
        data.push_str(&format!("E:{key}={value}\n"));
    }
    data.push_str("G:systemd\n");
    let udev = root.join("run/udev/data");
    fs::create_dir_all(&udev).expect("mkdir");
    fs::write(udev.join(format!("c188:{minor}")), data).expect("udev data");
    touch(&root.join("dev").join(name));
}

fn remove_udev_tty(root: &Path, name: &str, minor: u32) {
    fs::remove_dir_all(root.join("sys/class/tty").join(name)).expect("rm sys");
    fs::remove_file(root.join(format!("run/udev/data/c188:{minor}"))).expect("rm udev");
    fs::remove_file(root.join("dev").join(name)).expect("rm dev");
}

#[test]
fn udev_match_finds_one_tty_reports_ambiguity_and_follows_renumbering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let roots = Roots {
        dev: root.join("dev"),
        udev_data: root.join("run/udev/data"),
        sys: root.join("sys"),
    };
    // A two-port adapter: same serial, two interfaces on two hub paths.
    udev_tty(
        root,
        "ttyUSB0",
        0,
        &[
            ("ID_SERIAL_SHORT", "A10K1234"),
            ("ID_PATH", "pci-0000:00:14.0-usb-0:1.2:1.0"),
            ("ID_USB_INTERFACE_NUM", "00"),
        ],
        &[
            "serial/by-id/usb-FTDI_Dual_A10K1234-if00-port0",
            "serial/by-path/pci-0000:00:14.0-usb-0:1.2:1.0-port0",
        ],
    );
    udev_tty(
        root,
        "ttyUSB1",
        1,
        &[
            ("ID_SERIAL_SHORT", "A10K1234"),
            ("ID_PATH", "pci-0000:00:14.0-usb-0:1.2:1.1"),
            ("ID_USB_INTERFACE_NUM", "01"),
        ],
        &["serial/by-id/usb-FTDI_Dual_A10K1234-if01-port0"],
    );
    // An unrelated tty without udev data (a built-in UART) is skipped.
    fs::create_dir_all(root.join("sys/class/tty/ttyS0")).expect("mkdir");
    fs::write(root.join("sys/class/tty/ttyS0/dev"), "4:64\n").expect("dev");

    let by_serial = SerialIdentity::Udev {
        id_serial_short: Some("A10K1234".to_owned()),
        id_path: None,
        usb_interface_num: None,
    };
    match resolve(&by_serial, "rk", &roots) {
        Resolution::Ambiguous { candidates } => assert_eq!(
            candidates,
            vec![root.join("dev/ttyUSB0"), root.join("dev/ttyUSB1")]
        ),
        other => panic!("expected ambiguous, got {other:?}"),
    }

    let by_interface = SerialIdentity::Udev {
        id_serial_short: Some("A10K1234".to_owned()),
        id_path: None,
        usb_interface_num: Some("01".to_owned()),
    };
    assert_eq!(
        resolve(&by_interface, "rk", &roots),
        Resolution::Found(Device {
            node: root.join("dev/ttyUSB1"),
            stable: root.join("dev/serial/by-id/usb-FTDI_Dual_A10K1234-if01-port0"),
        })
    );

    // Matched by port, the by-path link is the stable path.
    let by_port = SerialIdentity::Udev {
        id_serial_short: None,
        id_path: Some("pci-0000:00:14.0-usb-0:1.2:1.0".to_owned()),
        usb_interface_num: None,
    };
    assert_eq!(
        resolve(&by_port, "rk", &roots),
        Resolution::Found(Device {
            node: root.join("dev/ttyUSB0"),
            stable: root.join("dev/serial/by-path/pci-0000:00:14.0-usb-0:1.2:1.0-port0"),
        })
    );

    let absent = SerialIdentity::Udev {
        id_serial_short: Some("B99".to_owned()),
        id_path: None,
        usb_interface_num: None,
    };
    let missing = resolve(&absent, "rk", &roots);
    let problem = missing.problem().expect("missing");
    assert!(
        problem.contains("no tty matches udev match `ID_SERIAL_SHORT=B99`"),
        "{problem}"
    );

    // Re-enumerated: interface 01 comes back as ttyUSB4, with our own udev symlink.
    remove_udev_tty(root, "ttyUSB1", 1);
    assert!(matches!(
        resolve(&by_interface, "rk", &roots),
        Resolution::Missing { .. }
    ));
    udev_tty(
        root,
        "ttyUSB4",
        4,
        &[
            ("ID_SERIAL_SHORT", "A10K1234"),
            ("ID_PATH", "pci-0000:00:14.0-usb-0:1.2:1.1"),
            ("ID_USB_INTERFACE_NUM", "01"),
        ],
        &[
            "serial/by-id/usb-FTDI_Dual_A10K1234-if01-port0",
            "runner-agent/rk",
        ],
    );
    assert_eq!(
        resolve(&by_interface, "rk", &roots),
        Resolution::Found(Device {
            node: root.join("dev/ttyUSB4"),
            stable: root.join("dev/runner-agent/rk"),
        })
    );
}

// ---------------------------------------------------------------------------------------------
// A lab: a configuration, a fake mbpoll, a simulated board.

struct Lab {
    dir: tempfile::TempDir,
}

struct BoardSpec<'a> {
    name: &'a str,
    coil: u16,
    coil_base: u8,
}

impl Lab {
    /// A lab whose boards share one relay bus (`relay-bus`); each board's console is
    /// `<dir>/<name>.console` (a simulator's link) and its power FIFO `<dir>/<name>.power`.
    fn new(boards: &[BoardSpec<'_>]) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let pat = root.join("pat");
        fs::write(&pat, "ghp_not_a_real_token_000000000000000000\n").expect("pat");
        fs::set_permissions(&pat, fs::Permissions::from_mode(0o600)).expect("chmod");
        touch(&root.join("relay-bus"));
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
        let mut config = format!(
            "version = 1\n\n[agent]\nstate_dir = \"{state}\"\nprofiles_dir = \"{profiles}\"\n\n\
             [github]\nurl = \"https://github.com/lab/os\"\npat_file = \"pat\"\n",
            state = root.join("state").display(),
            profiles = profiles.display(),
        );
        for board in boards {
            config.push_str(&format!(
                "\n[[board]]\nname = \"{name}\"\nprofile = \"roc-rk3568-pc\"\n\
                 tftp_dir = \"/srv/tftp/{name}\"\nnet_iface = \"eno2np1\"\n\
                 [board.console]\npath = \"{root}/{name}.console\"\n\
                 [board.power]\nkind = \"modbus-rtu\"\ndevice = \"{root}/relay-bus\"\n\
                 baud = 38400\nparity = \"none\"\nslave = 1\ncoil = {coil}\ncoil_base = {base}\n\
                 cycle_off_secs = 0\n",
                name = board.name,
                root = root.display(),
                coil = board.coil,
                base = board.coil_base,
            ));
        }
        fs::write(root.join("agent.toml"), config).expect("config");
        // The fake mbpoll: records its arguments, then tells the addressed board's simulator the
        // coil value through its FIFO (coil N drives board `b<N>`'s FIFO here via a map file).
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{root}/mbpoll.log'\n\
             coil=''; prev=''\nfor arg; do [ \"$prev\" = -r ] && coil=$arg; prev=$arg; last=$arg; done\n\
             fifo=$(cat '{root}/coil-'\"$coil\" 2>/dev/null) || exit 0\n\
             printf '%s\\n' \"$last\" > \"$fifo\"\n",
            root = root.display()
        );
        fs::write(root.join("mbpoll"), script).expect("mbpoll");
        fs::set_permissions(root.join("mbpoll"), fs::Permissions::from_mode(0o755)).expect("chmod");
        for board in boards {
            fs::write(
                root.join(format!("coil-{}", board.coil)),
                root.join(format!("{}.power", board.name))
                    .display()
                    .to_string(),
            )
            .expect("coil map");
        }
        Lab { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(agentctl());
        command
            .arg("--config")
            .arg(self.path("agent.toml"))
            .args(args)
            .env("RUNNER_AGENT_MBPOLL", self.path("mbpoll"))
            .env_remove("RUNNER_NAME")
            .env_remove("GITHUB_RUN_ID")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run agentctl")
    }

    fn list(&self) -> serde_json::Value {
        let output = self.run(&["board", "list", "--json"]);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("list json")
    }

    fn entry(&self, board: &str) -> serde_json::Value {
        self.list()
            .as_array()
            .expect("array")
            .iter()
            .find(|entry| entry["board"] == board)
            .cloned()
            .expect("board listed")
    }

    fn mbpoll_log(&self) -> Vec<String> {
        fs::read_to_string(self.path("mbpoll.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A running board simulator; killed when dropped.
struct Sim {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sim {
    fn start(lab: &Lab, board: &str, broken: bool) -> Sim {
        let mut command = Command::new(env!("CARGO_BIN_EXE_board-sim"));
        command
            .arg("--link")
            .arg(lab.path(&format!("{board}.console")))
            .arg("--power")
            .arg(lab.path(&format!("{board}.power")))
            .arg("--prompt")
            .arg("root@firefly:~#")
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        if broken {
            command.arg("--broken");
        }
        let mut child = command.spawn().expect("start board-sim");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        let sim = Sim { child, lines };
        eventually(10, "the simulator to be ready", || {
            sim.lines()
                .iter()
                .any(|line| line.starts_with("READY "))
                .then_some(())
        });
        sim
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in process whose life bounds a lease (a runner's worker); killed when dropped.
struct Worker(Child);

impl Worker {
    fn start() -> Worker {
        Worker(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep"),
        )
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn power_cycle_drives_the_relay_coil_with_mbpoll_and_the_board_boots() {
    let lab = Lab::new(&[
        BoardSpec {
            name: "b5",
            coil: 5,
            coil_base: 0,
        },
        BoardSpec {
            name: "b6",
            coil: 6,
            coil_base: 1,
        },
    ]);
    let sim = Sim::start(&lab, "b5", false);
    let relay = lab.path("relay-bus").display().to_string();

    let output = lab.run(&["board", "power", "cycle", "b5"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        lab.mbpoll_log(),
        vec![
            format!("-m rtu -a 1 -r 5 -t 0 -b 38400 -P none -0 {relay} 0"),
            format!("-m rtu -a 1 -r 5 -t 0 -b 38400 -P none -0 {relay} 1"),
        ]
    );
    eventually(10, "the board to see power off then on", || {
        let power: Vec<String> = sim
            .lines()
            .into_iter()
            .filter(|line| line.starts_with("POWER"))
            .collect();
        (power == ["POWER 0", "POWER 1"]).then_some(())
    });

    // A 1-based coil: no `-0`.
    let output = lab.run(&["board", "power", "off", "b6"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        lab.mbpoll_log().last().map(String::as_str),
        Some(format!("-m rtu -a 1 -r 6 -t 0 -b 38400 -P none {relay} 0").as_str())
    );

    // The probe resets the board and sees its prompt on the pty.
    let output = lab.run(&["board", "probe", "b5", "--timeout", "20"]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("board `b5` is healthy"),
        "{}",
        stdout(&output)
    );
    let entry = lab.entry("b5");
    assert_eq!(entry["state"], "idle");
    assert_eq!(entry["health"]["health"], "healthy");
    assert_eq!(
        entry["lease"],
        serde_json::Value::Null,
        "the probe gave its lease back"
    );
}

#[test]
fn a_board_that_never_prints_its_prompt_is_taken_offline() {
    let lab = Lab::new(&[BoardSpec {
        name: "b5",
        coil: 5,
        coil_base: 0,
    }]);
    let _sim = Sim::start(&lab, "b5", true);

    let output = lab.run(&["board", "probe", "b5", "--timeout", "2"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("board `b5` is unhealthy and now offline"),
        "{text}"
    );
    assert!(text.contains("no `root@firefly:~#`"), "{text}");
    assert!(
        text.contains("Kernel panic"),
        "the reason quotes the console: {text}"
    );

    let entry = lab.entry("b5");
    assert_eq!(entry["state"], "offline");
    let reason = entry["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("health probe failed: no `root@firefly:~#`"),
        "{reason}"
    );

    // Not handed to the next job.
    let worker = Worker::start();
    let output = lab.run(&[
        "board",
        "acquire",
        "b5",
        "--runner",
        "r1",
        "--job",
        "1",
        "--pid",
        &worker.pid(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("board `b5` is offline: health probe failed"),
        "{}",
        stderr(&output)
    );
    assert_eq!(lab.entry("b5")["lease"], serde_json::Value::Null);
}

#[test]
fn a_board_whose_console_is_missing_is_offline_with_the_reason() {
    let lab = Lab::new(&[BoardSpec {
        name: "b5",
        coil: 5,
        coil_base: 0,
    }]);
    let entry = lab.entry("b5");
    assert_eq!(entry["state"], "offline");
    let reason = entry["reason"].as_str().expect("reason");
    assert!(
        reason.contains("b5.console` does not resolve to a device"),
        "{reason}"
    );

    // It comes back when the device does.
    let _sim = Sim::start(&lab, "b5", false);
    let entry = lab.entry("b5");
    assert_eq!(entry["state"], "idle", "{entry}");
    let output = lab.run(&["board", "list"]);
    let table = stdout(&output);
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("BOARD  STATE")),
        "{table}"
    );
    assert!(table.contains("b5.console -> /dev/pts/"), "{table}");
}

#[test]
fn two_runners_contending_for_one_board_get_it_one_after_the_other() {
    let lab = Lab::new(&[BoardSpec {
        name: "b5",
        coil: 5,
        coil_base: 0,
    }]);
    let _sim = Sim::start(&lab, "b5", false);
    let worker_a = Worker::start();
    let worker_b = Worker::start();

    let output = lab.run(&[
        "board",
        "acquire",
        "b5",
        "--runner",
        "org-a-rk",
        "--job",
        "100/1/test",
        "--pid",
        &worker_a.pid(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("board `b5` leased to runner `org-a-rk` job `100/1/test`"));

    let err_b = lab.path("b.err");
    let mut b = lab
        .command(&[
            "board",
            "acquire",
            "b5",
            "--runner",
            "org-b-rk",
            "--job",
            "200/1/test",
            "--pid",
            &worker_b.pid(),
            "--timeout",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&err_b).expect("stderr file"))
        .spawn()
        .expect("spawn b");
    eventually(20, "runner b to wait for the board", || {
        fs::read_to_string(&err_b)
            .ok()
            .filter(|text| text.contains("waiting for board `b5`: held by runner `org-a-rk`"))
    });
    assert!(
        b.try_wait().expect("try_wait").is_none(),
        "b must still be waiting"
    );
    assert_eq!(lab.entry("b5")["lease"]["runner"], "org-a-rk");

    let output = lab.run(&[
        "board",
        "release",
        "b5",
        "--runner",
        "org-a-rk",
        "--job",
        "100/1/test",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    let status = eventually(20, "runner b to get the board", || {
        b.try_wait().expect("try_wait")
    });
    assert!(status.success());
    let entry = lab.entry("b5");
    assert_eq!(entry["state"], "leased");
    assert_eq!(entry["lease"]["runner"], "org-b-rk");
    assert_eq!(entry["lease"]["job"], "200/1/test");

    // A runner cannot free a lease it does not hold.
    let output = lab.run(&[
        "board",
        "release",
        "b5",
        "--runner",
        "org-a-rk",
        "--job",
        "100/1/test",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("is held by runner `org-b-rk`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_job_killed_mid_way_frees_the_board_for_the_next_one() {
    let lab = Lab::new(&[BoardSpec {
        name: "b5",
        coil: 5,
        coil_base: 0,
    }]);
    let _sim = Sim::start(&lab, "b5", false);
    // A stand-in runner worker: a process named `Runner.Worker` runs the job-started hook
    // (through a shell, as the runner does), then the job.
    let worker_bin = lab.path("Runner.Worker");
    symlink("/bin/sh", &worker_bin).expect("symlink");
    let hook = format!(
        "'{agentctl}' --config '{config}' board acquire b5 --runner org-a-rk --job 300/1/build",
        agentctl = agentctl().display(),
        config = lab.path("agent.toml").display()
    );
    let mut worker = Command::new(&worker_bin)
        .arg("-c")
        .arg("sh -c \"$0\" || exit 1; exec sleep 600")
        .arg(&hook)
        .env("RUNNER_AGENT_MBPOLL", lab.path("mbpoll"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker");
    let worker_pid = worker.id();
    let lease = eventually(20, "the worker's hook to take the board", || {
        let entry = lab.entry("b5");
        (entry["lease"]["runner"] == "org-a-rk").then_some(entry["lease"].clone())
    });
    assert_eq!(
        lease["pid"].as_u64(),
        Some(u64::from(worker_pid)),
        "the lease is bound to the Runner.Worker process, not the hook's shell"
    );

    // The job is killed mid-way (cancelled run, crashed runner): kill -9 the worker.
    worker.kill().expect("kill -9");
    let worker_b = Worker::start();
    let output = lab.run(&[
        "board",
        "acquire",
        "b5",
        "--runner",
        "org-b-rk",
        "--job",
        "400/1/test",
        "--pid",
        &worker_b.pid(),
        "--timeout",
        "10",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("freeing board `b5`: its holder runner `org-a-rk`"),
        "{}",
        stderr(&output)
    );
    let _ = worker.wait();
    let entry = lab.entry("b5");
    assert_eq!(entry["lease"]["runner"], "org-b-rk");
    assert_eq!(
        entry["lease"]["pid"].as_u64(),
        Some(u64::from(worker_b.0.id()))
    );
    let table = stdout(&lab.run(&["board", "list"]));
    assert!(table.contains("org-b-rk/400/1/test"), "{table}");
}

#[test]
fn power_commands_on_one_relay_bus_never_overlap() {
    let lab = Lab::new(&[
        BoardSpec {
            name: "b5",
            coil: 5,
            coil_base: 0,
        },
        BoardSpec {
            name: "b6",
            coil: 6,
            coil_base: 0,
        },
    ]);
    // A slow relay that notices overlapping requests.
    let script = format!(
        "#!/bin/sh\nmkdir '{root}/inflight' 2>/dev/null || echo OVERLAP >> '{root}/mbpoll.log'\n\
         printf '%s\\n' \"$*\" >> '{root}/mbpoll.log'\nsleep 0.2\nrmdir '{root}/inflight'\n",
        root = lab.dir.path().display()
    );
    fs::write(lab.path("mbpoll"), script).expect("mbpoll");
    let children: Vec<Child> = ["b5", "b6", "b5", "b6"]
        .iter()
        .map(|board| {
            lab.command(&["board", "power", "on", board])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("wait").success());
    }
    let log = lab.mbpoll_log();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(!log.iter().any(|line| line == "OVERLAP"), "{log:?}");
}

#[test]
fn every_shipped_profile_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).expect("boards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            let profile = runner_agent::config::load_profile(&path)
                .unwrap_or_else(|err| panic!("`{}`: {err}", path.display()));
            assert_eq!(
                Some(profile.name.as_str()),
                path.file_stem().and_then(|s| s.to_str())
            );
            names.push(profile.name);
        }
    }
    names.sort();
    assert_eq!(names, ["phytiumpi", "qemu-kvm-x86_64", "roc-rk3568-pc"]);
}

#[test]
fn job_hooks_take_and_give_back_the_board_from_the_runner_environment() {
    use runner_agent::boards::env::EnvContext;
    use runner_agent::boards::hooks::{job_completed, job_started, HookOptions};

    let lab = Lab::new(&[BoardSpec {
        name: "b5",
        coil: 5,
        coil_base: 0,
    }]);
    let sim = Sim::start(&lab, "b5", false);
    let ctx = EnvContext {
        agentctl: agentctl(),
        config: lab.path("agent.toml"),
    };
    let options = HookOptions {
        probe_before: true,
        power_off_after: true,
        ..HookOptions::default()
    };
    let started = lab.path("job-started.sh");
    let completed = lab.path("job-completed.sh");
    fs::write(&started, job_started("b5", &ctx, &options)).expect("write");
    fs::write(&completed, job_completed("b5", &ctx, &options)).expect("write");
    let hook = |script: &Path| {
        Command::new("sh")
            .arg(script)
            .env("RUNNER_AGENT_MBPOLL", lab.path("mbpoll"))
            .env("RUNNER_NAME", "org-a-rk-1")
            .env("GITHUB_RUN_ID", "7001")
            .env("GITHUB_RUN_ATTEMPT", "2")
            .env("GITHUB_JOB", "test-board")
            .stdin(Stdio::null())
            .output()
            .expect("hook")
    };

    let output = hook(&started);
    assert!(output.status.success(), "{}", stderr(&output));
    let lease = lab.entry("b5")["lease"].clone();
    assert_eq!(lease["runner"], "org-a-rk-1");
    assert_eq!(lease["job"], "7001/2/test-board");
    // The probe reset the board and saw its prompt.
    assert_eq!(lab.entry("b5")["health"]["health"], "healthy");
    assert!(sim.lines().iter().any(|line| line == "POWER 1"));

    let output = hook(&completed);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output)
        .contains("board `b5` released by runner `org-a-rk-1` job `7001/2/test-board`"));
    assert_eq!(lab.entry("b5")["lease"], serde_json::Value::Null);
    let relay = lab.path("relay-bus").display().to_string();
    assert_eq!(
        lab.mbpoll_log().last().map(String::as_str),
        Some(format!("-m rtu -a 1 -r 5 -t 0 -b 38400 -P none -0 {relay} 0").as_str()),
        "the board is switched off after the job"
    );
}

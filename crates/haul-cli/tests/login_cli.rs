//! `haul login`'s ways of taking a password. At a real (pseudo-)terminal the prompt must not show
//! what is typed, and an interrupted prompt must leave the terminal echoing again: there the test
//! is the user's terminal, reading what haul writes to the pty and typing into it as a person at a
//! shell would. The flags are checked as docker checks them.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Env, run};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{LocalModes, tcgetattr};
use test_registry::{RealRegistry, RegistryOptions};

const PASSWORD: &str = "s3cret-Typed-At-The-Prompt";

/// The terminal side of a pty running one `haul` process: everything the process wrote, as
/// the screen would show it.
struct Terminal {
    master: File,
    screen: Vec<u8>,
    output: mpsc::Receiver<Vec<u8>>,
    child: Child,
}

impl Terminal {
    /// Starts `command` with the pty's other end as stdin, stdout and stderr.
    fn spawn(mut command: Command) -> Terminal {
        let master: OwnedFd =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(name.to_str().unwrap())
            .unwrap();
        command
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        let child = command.spawn().unwrap();
        // Only the child holds the other end now, so reads end (EIO) when it exits.
        drop(command);
        let master = File::from(master);
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            master,
            screen: Vec::new(),
            output,
            child,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen).into_owned()
    }

    /// Reads until the screen shows `text` (panics after a minute with what it shows).
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.text().contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.screen.extend(chunk),
                Err(_) => panic!("{text:?} never showed; the screen:\n{}", self.text()),
            }
        }
    }

    fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Waits for the process to exit and for the last of its output.
    fn finish(mut self) -> (ExitStatus, String, File) {
        let status = self.child.wait().unwrap();
        while let Ok(chunk) = self.output.recv_timeout(Duration::from_secs(60)) {
            self.screen.extend(chunk);
        }
        let text = self.text();
        (status, text, self.master)
    }
}

async fn registry() -> RealRegistry {
    RealRegistry::start(RegistryOptions {
        htpasswd: vec![("alice".into(), PASSWORD.into())],
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_typed_at_the_prompt_is_not_shown() {
    let registry = registry().await;
    let env = Env::new();
    let mut haul = env.haul_process();
    haul.args(["login", &registry.host(), "-u", "alice"]);
    let mut terminal = Terminal::spawn(haul);

    terminal.wait_for("Password: ");
    terminal.type_text(&format!("{PASSWORD}\n"));
    let (status, screen, _) = terminal.finish();

    assert!(
        !screen.contains(PASSWORD),
        "the terminal showed the password:\n{screen}"
    );
    assert!(status.success(), "{status}: {screen}");
    assert!(screen.contains("Login Succeeded"), "{screen}");
    assert!(env.docker_config().exists(), "the login was saved");
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupting_the_password_prompt_gives_the_terminal_its_echo_back() {
    let registry = registry().await;
    let env = Env::new();
    let mut haul = env.haul_process();
    haul.args(["login", &registry.host(), "-u", "alice"]);
    let mut terminal = Terminal::spawn(haul);

    terminal.wait_for("Password: ");
    let at_prompt = tcgetattr(&terminal.master).unwrap();
    assert!(
        !at_prompt.local_modes.contains(LocalModes::ECHO),
        "echo is off while the password prompt shows"
    );
    // Ctrl-C, as the terminal's line discipline would send it to the foreground process.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&terminal.child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let (status, screen, master) = terminal.finish();

    assert_eq!(status.code(), Some(130), "{screen}");
    let after = tcgetattr(&master).unwrap();
    assert!(
        after.local_modes.contains(LocalModes::ECHO),
        "the shell gets a terminal that echoes again:\n{screen}"
    );
    assert!(!env.docker_config().exists(), "nothing was saved");
}

#[test]
fn password_flags_are_checked_in_dockers_order_and_words() {
    let env = Env::new();
    let out = run(env
        .haul()
        .args(["login", "registry.invalid", "-p", "x", "--password-stdin"]));
    assert_eq!(out.code, 2, "a usage error");
    assert_eq!(
        out.stderr,
        "WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n\
         Error: --password and --password-stdin are mutually exclusive\n"
    );

    let out = run(env
        .haul()
        .args(["login", "registry.invalid", "--password-stdin"])
        .write_stdin("x\n"));
    assert_eq!(out.code, 2, "a usage error");
    assert_eq!(
        out.stderr,
        "Error: Must provide --username with --password-stdin\n"
    );
    assert!(!env.docker_config().exists());
}

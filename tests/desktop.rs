//! The desktop example (`examples/desktop.rs`) for real: it opens a window on a virtual X
//! display (Xvfb), fine-tunes in the background of its UI loop, and saves a screenshot of
//! what it drew; the test then finds the loss curve's pixels in that picture.
//!
//! On Linux without a `DISPLAY`, the test starts `Xvfb` itself (Debian: `apt-get install
//! xvfb`). Without Xvfb it fails when `HYDRALORA_REQUIRE_GPU` is set (as in CI) and says
//! what to install otherwise. The example binary comes from the same `cargo test` build
//! (`cargo test` builds the examples).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The curve's colour in the example (`CURVE`).
const CURVE: [u8; 3] = [255, 128, 0];
const TIMEOUT: Duration = Duration::from_secs(600);

/// A virtual X display for the test's lifetime.
struct Xvfb(Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The display to use: the session's own, or a new Xvfb (None: none can be had here).
fn display() -> Option<(String, Option<Xvfb>)> {
    if let Ok(d) = std::env::var("DISPLAY") {
        if !d.is_empty() {
            return Some((d, None));
        }
    }
    if !cfg!(target_os = "linux") {
        return Some((String::new(), None)); // macOS and Windows open real windows
    }
    // -displayfd: Xvfb picks a free display number and writes it to our pipe when ready.
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .ok()?;
    let number = line.trim().to_string();
    if number.is_empty() {
        let _ = child.kill();
        return None;
    }
    Some((format!(":{number}"), Some(Xvfb(child))))
}

fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        info.color_type,
        png::ColorType::Rgba,
        "the example writes RGBA"
    );
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

#[test]
fn the_desktop_example_trains_in_the_background_and_draws_a_live_loss_curve() {
    let exe = common::example_binary("desktop");
    let Some((display, _xvfb)) = display() else {
        let hint =
            "no DISPLAY and no Xvfb to make one: install xvfb (Debian: apt-get install xvfb)";
        if std::env::var_os("HYDRALORA_REQUIRE_GPU").is_some() {
            panic!("{hint}");
        }
        eprintln!("skipped: {hint}");
        return;
    };
    let dir = std::env::temp_dir().join(format!("hydralora-desktop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("window.png");
    let mut command = Command::new(&exe);
    command
        .args([
            "--steps",
            "60",
            "--base-steps",
            "20",
            "--screenshot-after",
            "6",
        ])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--screenshot")
        .arg(&shot);
    if !display.is_empty() {
        command
            .env("DISPLAY", &display)
            .env_remove("WAYLAND_DISPLAY");
    }
    let mut child = command.spawn().expect("the example starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("the desktop example did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "the desktop example failed: {status}");

    let (w, h, rgba) = read_png(&shot);
    assert!(w >= 400 && h >= 300, "a window-sized picture, got {w}x{h}");
    // The curve: pixels of its colour (antialiased edges aside), spread over a wide range of
    // columns, since the x axis spans the steps so far.
    let near = |p: &[u8]| p[..3].iter().zip(CURVE).all(|(&a, b)| a.abs_diff(b) <= 24);
    let mut columns = std::collections::BTreeSet::new();
    let mut count = 0;
    for (i, px) in rgba.chunks(4).enumerate() {
        if near(px) {
            count += 1;
            columns.insert(i % w);
        }
    }
    let (first, last) = (
        columns.first().copied().unwrap_or(0),
        columns.last().copied().unwrap_or(0),
    );
    assert!(
        count >= 100 && last - first >= w / 2,
        "expected a loss curve across the plot: {count} curve pixels over columns {first}..{last} of {w}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

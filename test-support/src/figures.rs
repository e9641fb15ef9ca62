//! Figures a test measured: printed as they come and written to `target/<name>-figures.txt`,
//! which hack/test.sh prints after the suite (cargo test hides a passing test's output).

pub struct Figures {
    name: &'static str,
    lines: String,
}

impl Figures {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            lines: String::new(),
        }
    }

    pub fn add(&mut self, line: String) {
        eprintln!("{}: {line}", self.name);
        self.lines.push_str(&format!("{}: {line}\n", self.name));
    }
}

impl Drop for Figures {
    fn drop(&mut self) {
        let path = crate::target::target_dir().join(format!("{}-figures.txt", self.name));
        let _ = std::fs::write(path, &self.lines);
    }
}

//! Chat templates: the Jinja program a chat model ships with to turn messages into the one text
//! it was trained on. Rendered with minijinja exactly as transformers'
//! `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` does: the same
//! environment settings (`trim_blocks`, `lstrip_blocks`, no kept trailing newline), the same
//! variables (`messages`, `add_generation_prompt`, and the special tokens such as `bos_token`),
//! the same helpers (`raise_exception`, `strftime_now`, `tojson`) and Python's string methods
//! (`.strip()`, `.startswith()`, … through minijinja-contrib's pycompat). transformers then
//! tokenises the rendered text with `add_special_tokens=False`; so does [`ChatTemplate`]'s user.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One message of a conversation.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Self {
            role: "user".to_string(),
            content: content.to_string(),
        }
    }
}

/// A chat template and the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    /// `bos_token`, `eos_token`, … as transformers passes them (its `special_tokens_map`).
    special_tokens: BTreeMap<String, String>,
    /// Where the template was read, for messages ("the chat template in …").
    origin: Option<String>,
}

/// Marks where a user message goes, to split a rendered prompt around it. Private-use code
/// points: no template writes them, and no user text is expected to contain them.
const SLOT: &str = "\u{F8FF}\u{F8FE}clipsteer-user\u{F8FE}\u{F8FF}";

impl ChatTemplate {
    /// A template from its Jinja source; it is compiled once here so that a broken template is
    /// reported before any model runs.
    pub fn new(source: &str, special_tokens: BTreeMap<String, String>) -> Result<Self> {
        Self::read_from(source, special_tokens, None)
    }

    /// [`ChatTemplate::new`] for a template read from `origin` (a file, or a GGUF's metadata
    /// key), which its messages name.
    fn read_from(
        source: &str,
        special_tokens: BTreeMap<String, String>,
        origin: Option<String>,
    ) -> Result<Self> {
        let template = Self {
            // jinja2 reads every line ending as "\n" (its newline_sequence), in the template's
            // text and in its string literals; a .jinja file saved on Windows renders the same.
            source: generation_blocks_as_ifs(&source.replace("\r\n", "\n").replace('\r', "\n")),
            special_tokens,
            origin,
        };
        let env = environment();
        env.template_from_str(&template.source).map_err(|e| {
            anyhow::anyhow!(
                "{} does not compile: {}",
                template.named(),
                e.to_string().replace('\n', " ")
            )
        })?;
        Ok(template)
    }

    /// "the chat template", and where it was read when known.
    fn named(&self) -> String {
        match &self.origin {
            Some(origin) => format!("the chat template in {origin}"),
            None => "the chat template".to_string(),
        }
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), with its bos/eos/unk/pad tokens
    /// (`tokenizer.ggml.*_token_id`). Reads only the file's metadata.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let (content, _) = crate::models::gguf::read_gguf(path)?;
        Self::from_gguf_metadata(&content, path)
    }

    /// [`ChatTemplate::from_gguf`] from a header already read; `path` names the file in errors.
    pub fn from_gguf_metadata(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let Some(source) = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
        else {
            bail!(
                "{} has no tokenizer.chat_template; give one with --chat-template (a tokenizer_config.json or a .jinja file)",
                path.display()
            );
        };
        let tokens: Vec<String> = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| t.to_string().cloned().unwrap_or_default())
                .collect(),
            None => Vec::new(),
        };
        let mut special = BTreeMap::new();
        for name in ["bos", "eos", "unk", "pad"] {
            let key = format!("tokenizer.ggml.{name}_token_id");
            if let Some(id) = content.metadata.get(&key).and_then(|v| v.to_u32().ok()) {
                if let Some(token) = tokens.get(id as usize) {
                    special.insert(format!("{name}_token"), token.clone());
                }
            }
        }
        Self::read_from(
            source,
            special,
            Some(format!("{}'s tokenizer.chat_template", path.display())),
        )
    }

    /// The template of a Hugging Face `tokenizer_config.json` (`chat_template`, a string or the
    /// list of named templates, of which "default" is used), with its special tokens.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let jinja = path.with_file_name("chat_template.jinja");
        if !crate::files::model_file_present(path)? && !crate::files::model_file_present(&jinja)? {
            crate::usage_bail!(
                "there is no {} (nor a {}): give the file that holds the chat template",
                path.display(),
                jinja.display()
            );
        }
        Self::read_tokenizer_config(path)?.with_context(|| {
            format!(
                "{} has no chat_template (and there is no {}); give one with --chat-template",
                path.display(),
                jinja.display()
            )
        })
    }

    /// [`ChatTemplate::from_tokenizer_config`] for a model that may have no template: None when
    /// the file is absent or names none (and no chat_template.jinja stands beside it). A file
    /// that is there but unreadable, or a template that does not compile, is an error.
    pub fn in_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        // Not is_file(): a FIFO there is refused by the read, not taken for no file.
        // transformers reads chat_template.jinja as a file of its own, config or not.
        if !crate::files::model_file_present(path)?
            && !crate::files::model_file_present(&path.with_file_name("chat_template.jinja"))?
        {
            return Ok(None);
        }
        Self::read_tokenizer_config(path)
    }

    fn read_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let config: serde_json::Value = if crate::files::model_file_present(path)? {
            let text = crate::files::read_regular_to_string(path, &path.display().to_string())?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?
        } else {
            serde_json::Value::Null
        };
        // transformers: a chat_template.jinja beside the config replaces the config's template.
        let jinja = path.with_file_name("chat_template.jinja");
        let origin = Some(path.display().to_string());
        let (source, origin) = match &config["chat_template"] {
            _ if crate::files::model_file_present(&jinja)? => (
                crate::files::read_regular_to_string(&jinja, &jinja.display().to_string())?,
                Some(jinja.display().to_string()),
            ),
            serde_json::Value::String(s) => (s.clone(), origin),
            serde_json::Value::Array(named) => (
                named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(String::from)
                    .with_context(|| {
                        format!("{}: chat_template has no \"default\" entry", path.display())
                    })?,
                origin,
            ),
            serde_json::Value::Null => return Ok(None),
            other => bail!(
                "{}: chat_template must be a string or a list of named templates, not {other}",
                path.display()
            ),
        };
        let mut special = BTreeMap::new();
        for name in [
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ] {
            // A plain string, or an AddedToken object {"content": ...}.
            let value = &config[name];
            let token = value.as_str().or_else(|| value["content"].as_str());
            if let Some(token) = token {
                special.insert(name.to_string(), token.to_string());
            }
        }
        Self::read_from(&source, special, origin).map(Some)
    }

    /// A template from a file: a `tokenizer_config.json`, a directory holding one, a `.gguf`
    /// file, or a bare Jinja template (any other file).
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let config = path.join("tokenizer_config.json");
            return Self::in_tokenizer_config(&config)?.with_context(|| {
                format!(
                    "{} has no tokenizer_config.json with a chat_template and no chat_template.jinja; give the template's file",
                    path.display()
                )
            });
        }
        if !crate::files::model_file_present(path)? {
            crate::usage_bail!("there is no chat template file {}", path.display());
        }
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("gguf") => Self::from_gguf(path),
            Some("json") => Self::from_tokenizer_config(path),
            _ => {
                let source =
                    crate::files::read_regular_to_string(path, &path.display().to_string())?;
                Self::read_from(&source, BTreeMap::new(), Some(path.display().to_string()))
            }
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text of `messages`, as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=…)`.
    ///
    /// The template is a program from the model's repository, and jinja2's sandbox (which
    /// transformers uses) bounds none of its memory or time: on Unix it runs in a forked child
    /// with [`RENDER_MEMORY`] more address space than this process and [`RENDER_SECONDS`] of CPU
    /// time ([`isolated`]), besides the fuel and output caps, so that a hostile one ends in a
    /// one-line error instead of filling memory or hanging.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_fueled(messages, add_generation_prompt, RENDER_FUEL)
    }

    /// [`ChatTemplate::render`] with `fuel` instructions. Everything but the render itself is
    /// done here, before the fork: the child only runs minijinja over values already built and
    /// reports without anyhow (whose backtrace capture takes locks that another thread may have
    /// held at the fork).
    fn render_fueled(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        fuel: u64,
    ) -> Result<String> {
        let mut env = environment();
        env.set_fuel(Some(fuel));
        let mut context: BTreeMap<&str, minijinja::Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.as_str(), minijinja::Value::from(v.as_str())))
            .collect();
        context.insert("messages", minijinja::Value::from_serialize(messages));
        context.insert(
            "add_generation_prompt",
            minijinja::Value::from(add_generation_prompt),
        );
        // transformers passes these as None when not given, so `tools is defined` holds there.
        context.insert("tools", minijinja::Value::from(()));
        context.insert("documents", minijinja::Value::from(()));
        let named = self.named();
        let template = env.template_from_str(&self.source).map_err(|e| {
            anyhow::anyhow!(
                "cannot render {named}: {}",
                e.to_string().replace('\n', " ")
            )
        })?;
        let outcome = isolated(&named, || {
            let mut out = CappedWriter::default();
            match template.render_captured_to(&context, &mut out).map(drop) {
                Ok(()) => String::from_utf8(out.bytes).map_err(|_| RenderFailure::NotUtf8),
                Err(_) if out.overflowed => Err(RenderFailure::TooLong),
                Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                    Err(RenderFailure::OutOfFuel)
                }
                Err(e) => Err(RenderFailure::Jinja(e.to_string().replace('\n', " "))),
            }
        })?;
        outcome.map_err(|failure| match failure {
            RenderFailure::NotUtf8 => anyhow::anyhow!("{named} rendered text that is not UTF-8"),
            RenderFailure::TooLong => anyhow::anyhow!(
                "{named} renders more than {} MiB for {} message(s): no model's context holds \
                 that; the template is broken or hostile",
                MAX_RENDERED_BYTES >> 20,
                messages.len()
            ),
            RenderFailure::OutOfFuel => anyhow::anyhow!(
                "{named} ran more than {fuel} steps without finishing: a real template renders a \
                 conversation in a few thousand; it is broken or hostile"
            ),
            RenderFailure::Jinja(message) => anyhow::anyhow!("cannot render {named}: {message}"),
        })
    }

    /// The prompt a model receives for one user message, ready for its answer (default system
    /// prompt included, when the template has one).
    pub fn user_prompt(&self, user: &str) -> Result<String> {
        self.render(&[Message::user(user)], true)
    }

    /// The rendered prompt of one user message split around that message: (before, after), so
    /// that `before + user + after` is [`ChatTemplate::user_prompt`]'s text.
    pub fn user_slot(&self) -> Result<(String, String)> {
        let rendered = self.user_prompt(SLOT)?;
        let mut parts = rendered.split(SLOT);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(before), Some(after), None) => Ok((before.to_string(), after.to_string())),
            _ => bail!(
                "the chat template does not write the user message exactly once, as is; the attack needs it to"
            ),
        }
    }
}

/// transformers' `{% generation %}…{% endgeneration %}` (its AssistantTracker extension, which
/// marks the assistant's tokens for `return_assistant_tokens_mask`) renders its body unchanged;
/// minijinja has no such tag, so each becomes `{% if true %}`…`{% endif %}`, keeping the
/// whitespace-control marks (`{%-`, `-%}`) that trim around it.
fn generation_blocks_as_ifs(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start + 2..];
        let body = tag.strip_prefix(['-', '+']).unwrap_or(tag);
        let open_mark = &tag[..tag.len() - body.len()];
        let trimmed = body.trim_start();
        let word_end = trimmed
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(trimmed.len());
        let replacement = match &trimmed[..word_end] {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        let after = trimmed[word_end..].trim_start();
        let close = ["-%}", "+%}", "%}"]
            .into_iter()
            .find(|mark| after.starts_with(mark));
        match (replacement, close) {
            (Some(replacement), Some(close)) => {
                out.push_str(&format!("{{%{open_mark} {replacement} {close}"));
                rest = &after[close.len()..];
            }
            _ => {
                out.push_str("{%");
                rest = tag;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Why a render failed, as the child of [`isolated`] reports it (plain data: the parent words
/// the error).
enum RenderFailure {
    /// minijinja's message: an undefined name, `raise_exception`, a type error.
    Jinja(String),
    TooLong,
    OutOfFuel,
    NotUtf8,
}

/// Instructions a render may run. The 70 real templates of llama.cpp's `models/templates/` use
/// at most 430 on one message (Kimi K3); this is over 20 000 times more, and still stops a
/// runaway loop within a second.
const RENDER_FUEL: u64 = 10_000_000;

/// The longest rendered text: 16 MiB is about four million tokens, past every model's context,
/// so a template that writes more (range() over range(), each repeating the message) is
/// stopped before it fills memory.
const MAX_RENDERED_BYTES: usize = 16 << 20;

/// Address space a render may add to this process's (the child of [`isolated`] starts as a
/// copy of it): 1 GiB, some 60 times the largest text it may write.
const RENDER_MEMORY: u64 = 1 << 30;

/// Seconds of CPU a render may use (RLIMIT_CPU: a busy machine does not make a real template
/// fail, as a wall clock would). The real templates take well under a millisecond.
const RENDER_SECONDS: u64 = 3;

/// Seconds of wall clock the parent waits for the child at most: a backstop for a child that
/// uses no CPU (blocked), far past what [`RENDER_SECONDS`] of CPU takes on a loaded machine.
const RENDER_WAIT_SECONDS: u64 = 60;

/// Runs `render` in a forked child, bounded in memory and time, and returns what it returned.
///
/// Why a process: a template can build a string by doubling it in a loop (40 instructions make
/// a terabyte) or format a list of 10^10 items before writing a byte; neither uses much fuel,
/// and minijinja offers no bound on a value's size. An allocation past the child's address
/// space limit aborts the child alone, and a child past its time is killed. The child only
/// renders (no threads, no locks that another thread could hold at the fork besides malloc's,
/// which glibc resets) and leaves with `_exit`, so nothing of this process runs twice.
#[cfg(unix)]
fn isolated(
    named: &str,
    render: impl FnOnce() -> std::result::Result<String, RenderFailure>,
) -> Result<std::result::Result<String, RenderFailure>> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe writes two new descriptors into the array it is given.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!(
            "cannot render {named}: no pipe ({})",
            std::io::Error::last_os_error()
        );
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    let address_space = current_address_space();
    // SAFETY: the child runs only `render`, writes to its pipe and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        render_in_child(render, read_end, write_end, address_space);
    }
    // SAFETY: the parent owns its end of the pipe from here; the write end is the child's.
    unsafe { libc::close(write_end) };
    if child < 0 {
        // SAFETY: the read end is ours and nothing else holds it.
        unsafe { libc::close(read_end) };
        bail!(
            "cannot render {named}: cannot start a process for it ({})",
            std::io::Error::last_os_error()
        );
    }
    let (bytes, ending) = read_child(read_end);
    let mut status = 0;
    // SAFETY: signals (when it is still writing or stuck) and reaps the child this function
    // forked; a child that closed its pipe has left or is leaving.
    unsafe {
        if !matches!(ending, ChildEnding::Finished) {
            libc::kill(child, libc::SIGKILL);
        }
        libc::waitpid(child, &mut status, 0);
    }
    let out_of_cpu = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGXCPU;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match (ending, bytes.split_first()) {
        (ChildEnding::Overflowed, _) => bail!(
            "{named} wrote more than {} MiB: the template is broken or hostile",
            MAX_RENDERED_BYTES >> 20
        ),
        (ChildEnding::TimedOut, _) => bail!(
            "{named} did not finish rendering within {RENDER_WAIT_SECONDS} s: a real template \
             takes under a millisecond; it is broken or hostile"
        ),
        (ChildEnding::Finished, _) if out_of_cpu => bail!(
            "{named} did not finish rendering within {RENDER_SECONDS} s of CPU: a real template \
             takes under a millisecond; it is broken or hostile"
        ),
        (ChildEnding::Finished, Some((b'O', rendered))) => Ok(Ok(text(rendered))),
        (ChildEnding::Finished, Some((b'J', message))) => {
            Ok(Err(RenderFailure::Jinja(text(message))))
        }
        (ChildEnding::Finished, Some((b'L', _))) => Ok(Err(RenderFailure::TooLong)),
        (ChildEnding::Finished, Some((b'F', _))) => Ok(Err(RenderFailure::OutOfFuel)),
        (ChildEnding::Finished, Some((b'U', _))) => Ok(Err(RenderFailure::NotUtf8)),
        (ChildEnding::Finished, Some((b'P', _))) => {
            bail!("cannot render {named}: the renderer panicked")
        }
        _ => bail!(
            "{named} used more than {} MiB of memory while rendering: a real template needs a \
             few kilobytes; it is broken or hostile",
            RENDER_MEMORY >> 20
        ),
    }
}

/// The child's side of [`isolated`]: bounds itself, renders, writes a tag byte ('O' and the
/// text; 'J' and minijinja's message; 'L', 'F', 'U' for the other failures; 'P' for a panic)
/// to `write_end`, and leaves.
#[cfg(unix)]
fn render_in_child(
    render: impl FnOnce() -> std::result::Result<String, RenderFailure>,
    read_end: libc::c_int,
    write_end: libc::c_int,
    address_space: Option<u64>,
) -> ! {
    // SAFETY: in the child, on descriptors and limits of its own.
    unsafe {
        libc::close(read_end);
        // An allocation past the limit aborts with a message and a backtrace on stderr;
        // the parent's one line says what happened instead.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 2);
            libc::close(null);
        }
        let cpu = libc::rlimit {
            rlim_cur: RENDER_SECONDS as libc::rlim_t,
            rlim_max: (RENDER_SECONDS + 1) as libc::rlim_t,
        };
        libc::setrlimit(libc::RLIMIT_CPU, &cpu);
        if let Some(used) = address_space {
            let limit = libc::rlimit {
                rlim_cur: used.saturating_add(RENDER_MEMORY) as libc::rlim_t,
                rlim_max: used.saturating_add(RENDER_MEMORY) as libc::rlim_t,
            };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
        }
    }
    let (tag, text) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(render)) {
        Ok(Ok(text)) => (b'O', text),
        Ok(Err(RenderFailure::Jinja(message))) => (b'J', message),
        Ok(Err(RenderFailure::TooLong)) => (b'L', String::new()),
        Ok(Err(RenderFailure::OutOfFuel)) => (b'F', String::new()),
        Ok(Err(RenderFailure::NotUtf8)) => (b'U', String::new()),
        Err(_) => (b'P', String::new()),
    };
    let mut message = Vec::with_capacity(text.len() + 1);
    message.push(tag);
    message.extend_from_slice(text.as_bytes());
    let mut written = 0;
    while written < message.len() {
        // SAFETY: writes from a live buffer to the child's own pipe end.
        let n = unsafe {
            libc::write(
                write_end,
                message[written..].as_ptr().cast(),
                message.len() - written,
            )
        };
        if n <= 0 {
            break;
        }
        written += n as usize;
    }
    // SAFETY: leaves the child without running this process's exit handlers.
    unsafe { libc::_exit(0) };
}

/// How the child's output ended.
#[cfg(unix)]
enum ChildEnding {
    Finished,
    TimedOut,
    Overflowed,
}

/// The parent's side of [`isolated`]: what the child wrote to `read_end` within
/// [`RENDER_SECONDS`], and how it ended.
#[cfg(unix)]
fn read_child(read_end: libc::c_int) -> (Vec<u8>, ChildEnding) {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: read_end is an open descriptor this function owns; File closes it.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(read_end) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(RENDER_WAIT_SECONDS);
    let limit = MAX_RENDERED_BYTES + (1 << 16);
    let mut bytes = Vec::new();
    let mut ending = ChildEnding::Finished;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd {
            fd: read_end,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one descriptor this function owns.
        let ready =
            unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if ready == 0 {
            ending = ChildEnding::TimedOut;
            break;
        }
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        match pipe.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) if bytes.len() + n <= limit => bytes.extend_from_slice(&buffer[..n]),
            Ok(_) => {
                ending = ChildEnding::Overflowed;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (bytes, ending)
}

#[cfg(not(unix))]
fn isolated(
    _: &str,
    render: impl FnOnce() -> std::result::Result<String, RenderFailure>,
) -> Result<std::result::Result<String, RenderFailure>> {
    Ok(render())
}

/// This process's address space in bytes (Linux's /proc/self/statm); None where unknown,
/// and the child then runs with the time limit alone.
#[cfg(unix)]
fn current_address_space() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

/// An in-memory writer that refuses to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct CappedWriter {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<minijinja::Value, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    // jinja2's tests call iter() and len()/[] as Python does: none is not iterable (minijinja
    // iterates it as empty, so Qwen3-Coder's `tools is iterable and tools | length > 0` failed on
    // tools=None), and a string or a mapping is a sequence (minijinja's counts lists only).
    env.add_test("iterable", |value: minijinja::Value| {
        !value.is_none() && value.try_iter().is_ok()
    });
    env.add_test("sequence", |value: minijinja::Value| {
        matches!(
            value.kind(),
            minijinja::value::ValueKind::Seq
                | minijinja::value::ValueKind::Map
                | minijinja::value::ValueKind::String
        )
    });
    env.add_function("strftime_now", |format: String| -> String {
        strftime_now(&format)
    });
    // transformers' tojson is Python's json.dumps(ensure_ascii=False): ", " and ": " between
    // items, no HTML escaping (minijinja's own escapes quotes and angle brackets).
    env.add_filter(
        "tojson",
        |value: minijinja::Value,
         kwargs: minijinja::value::Kwargs|
         -> std::result::Result<String, minijinja::Error> {
            let indent: Option<usize> = kwargs.get("indent")?;
            let _: Option<bool> = kwargs.get("ensure_ascii")?;
            let _: Option<bool> = kwargs.get("sort_keys")?;
            kwargs.assert_all_used()?;
            let json = serde_json::to_value(&value).map_err(|e| {
                minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
            })?;
            let mut out = String::new();
            python_json(&json, indent, 0, &mut out);
            Ok(out)
        },
    );
    env
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)` as Python writes it.
fn python_json(value: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// (year, month 1–12, day 1–31) of a day counted from 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm; no date crate for one date).
pub(crate) fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The current UTC date and time in a strftime `format`, for templates that print today's date
/// (Llama 3's). Covers the directives such templates use.
fn strftime_now(format: &str) -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_date(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(source, BTreeMap::new()).unwrap()
    }

    /// A template is a program from the model's repository: a runaway loop stops on fuel, and
    /// one that repeats the message past any context stops on the output cap, each with a line
    /// that says the template is at fault, before memory fills.
    #[test]
    fn a_runaway_template_is_stopped() {
        let user = [Message::user(&"y".repeat(1000))];
        let spin = template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        );
        let error = spin.render(&user, true).unwrap_err().to_string();
        assert!(
            error.starts_with("the chat template ran more than 10000000 steps"),
            "{error}"
        );
        let flood = template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{{ messages[0].content }}{% endfor %}{% endfor %}",
        );
        let error = flood.render(&user, true).unwrap_err().to_string();
        assert!(
            error.starts_with("the chat template renders more than 16 MiB for 1 message(s)"),
            "{error}"
        );
        assert!(!error.contains('\n'));
        // A string doubled in a loop writes nothing and uses little fuel: the child's memory
        // bound stops it. A list formatted whole before it is written: the time bound.
        let double = template(
            "{% set ns = namespace(s='x') %}{% for i in range(48) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        );
        // Which bound it meets first depends on the machine's memory bandwidth.
        let error = double.render(&user, true).unwrap_err().to_string();
        assert!(
            error.starts_with("the chat template used more than 1024 MiB of memory")
                || error
                    .starts_with("the chat template did not finish rendering within 3 s of CPU"),
            "{error}"
        );
        let list = template("{{ range(100000)|list * 100000 }}");
        let error = list.render(&user, true).unwrap_err().to_string();
        assert!(
            error.starts_with("the chat template did not finish rendering within 3 s of CPU"),
            "{error}"
        );
        // And the process that asked is as it was: a real template renders after them.
        let plain = template("{{ messages[0].content }}!");
        assert_eq!(
            plain.render(&user, true).unwrap(),
            format!("{}!", "y".repeat(1000))
        );
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let source = "A{%- generation -%}\n B {{ messages[0].content }}\n{%- endgeneration %} C{% generations %}{%generation%}D{%endgeneration%}";
        assert_eq!(
            generation_blocks_as_ifs(source),
            "A{%- if true -%}\n B {{ messages[0].content }}\n{%- endif %} C{% generations %}{% if true %}D{% endif %}"
        );
        let template =
            template("{%- generation -%}\n [{{ messages[0].content }}]\n{%- endgeneration -%}\n");
        assert_eq!(template.render(&[Message::user("x")], true).unwrap(), "[x]");
    }

    /// As jinja2: none is not iterable, and a string is a sequence.
    #[test]
    fn iterable_and_sequence_as_jinja2() {
        let template = template(
            "{{ tools is iterable }} {{ messages is iterable }} {{ 'ab' is sequence }} {{ messages[0] is sequence }} {{ 3 is sequence }} {{ tools is sequence }}",
        );
        assert_eq!(
            template.render(&[Message::user("x")], true).unwrap(),
            "False True True True False False"
        );
    }

    /// The families' real templates render in a thousandth of the fuel: the 70 templates of
    /// llama.cpp's models/templates took at most 430 on one message (Kimi K3).
    #[test]
    fn real_templates_render_well_within_the_fuel() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/reference/chat-templates-families.json");
        let references: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut rendered = 0;
        for family in references["templates"].as_array().unwrap() {
            let special: BTreeMap<String, String> =
                serde_json::from_value(family["special_tokens"].clone()).unwrap();
            let template =
                ChatTemplate::new(family["template"].as_str().unwrap(), special).unwrap();
            for case in family["cases"].as_array().unwrap() {
                let messages: Vec<Message> =
                    serde_json::from_value(case["messages"].clone()).unwrap();
                let add = case["add_generation_prompt"].as_bool().unwrap();
                let full = template.render_fueled(&messages, add, RENDER_FUEL);
                let lean = template.render_fueled(&messages, add, RENDER_FUEL / 1000);
                assert_eq!(full.is_ok(), lean.is_ok(), "{}", family["family"]);
                rendered += usize::from(lean.is_ok());
            }
        }
        assert!(rendered >= 100, "{rendered}");
    }
}

//! `cairn shell`: an interactive prompt in the manner of the OmniPaxos demo's
//! network actor. `put a 1`, `get a`, `delete a`; a trailing port or address
//! sends that one command to another node (`get a 7002`). Every other client
//! command of the CLI works too (`table list`, `doc get users 1 --addr 7002`).
//!
//! On a terminal the prompt has line editing and a history kept in
//! `~/.cairn_history`. Fed from a pipe it reads one command per line, prints no
//! prompt, and exits with 1 if any command failed, so it can be scripted.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use cairn_client::{Client, Read};
use clap::Parser;
use rustyline::error::ReadlineError;

use crate::args::{Cli, Command, Global};
use crate::client_cmd;
use crate::output;

/// Lines kept in the history file.
const HISTORY_LINES_MAX: usize = 1000;

const HELP: &str = "\
commands:
  put KEY VALUE [NODE]    store VALUE under KEY
  get KEY [NODE]          print the value under KEY
  delete KEY [NODE]       delete KEY
  table list|create T|drop T
  doc insert|get|replace|update|delete|list ...   (as on the command line)
  health, cluster         this node's health, the cluster it sees
  history                 commands typed so far
  help, quit
NODE is a port on 127.0.0.1 (7002) or HOST:PORT; it applies to that one command.
Quote values with spaces: put greeting \"hello world\"";

struct Shell<'a> {
    runtime: &'a tokio::runtime::Runtime,
    global: &'a Global,
    clients: HashMap<String, Client>,
    history: Vec<String>,
}

pub fn run(runtime: &tokio::runtime::Runtime, global: &Global) -> ExitCode {
    let mut shell = Shell { runtime, global, clients: HashMap::new(), history: Vec::new() };
    if let Err(e) = shell.client(&global.addr) {
        return output::usage(global.output, &e.to_string());
    }
    if std::io::stdin().is_terminal() {
        shell.interactive()
    } else {
        shell.scripted()
    }
}

fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cairn_history"))
}

impl Shell<'_> {
    fn interactive(&mut self) -> ExitCode {
        let config = rustyline::Config::builder().max_history_size(HISTORY_LINES_MAX);
        let editor =
            config.and_then(|config| rustyline::DefaultEditor::with_config(config.build()));
        let mut editor = match editor {
            Ok(editor) => editor,
            Err(e) => {
                eprintln!("error: cannot open the terminal: {e}");
                return ExitCode::FAILURE;
            }
        };
        let history = history_file();
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        println!(
            "cairn shell, talking to {}. Type 'help' for commands, Ctrl-D to leave.",
            self.global.addr
        );
        loop {
            match editor.readline("cairn> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    if self.line(&line) == Flow::Quit {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("error: {e}");
                    break;
                }
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        ExitCode::SUCCESS
    }

    fn scripted(&mut self) -> ExitCode {
        let mut failed = false;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match self.line(&line) {
                Flow::Quit => break,
                Flow::Failed => failed = true,
                Flow::Ok => {}
            }
        }
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }

    fn client(&mut self, addr: &str) -> Result<Client, String> {
        if let Some(client) = self.clients.get(addr) {
            return Ok(client.clone());
        }
        let client = self.global.client(addr)?;
        self.clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Runs one line of input.
    fn line(&mut self, line: &str) -> Flow {
        let words = match shell_words::split(line) {
            Ok(words) => words,
            Err(e) => {
                eprintln!("error: {e} (check your quotes)");
                return Flow::Failed;
            }
        };
        let Some(first) = words.first() else {
            return Flow::Ok;
        };
        self.history.push(line.trim().to_string());
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match (first.as_str(), &words[1..]) {
            ("quit" | "exit", _) => Flow::Quit,
            ("help", _) => {
                println!("{HELP}");
                Flow::Ok
            }
            ("history", _) => {
                for (n, entry) in self.history.iter().enumerate() {
                    println!("{:>4}  {entry}", n + 1);
                }
                Flow::Ok
            }
            ("put", [key, value]) => {
                self.kv(None, Command::Put { key: key.to_string(), value: value.to_string() })
            }
            ("put", [key, value, node]) => self
                .kv(Some(*node), Command::Put { key: key.to_string(), value: value.to_string() }),
            ("get", [key]) => self.get(None, key),
            ("get", [key, node]) => self.get(Some(*node), key),
            ("delete", [key]) => self.kv(None, Command::Delete { key: key.to_string() }),
            ("delete", [key, node]) => {
                self.kv(Some(*node), Command::Delete { key: key.to_string() })
            }
            ("put" | "get" | "delete", _) => {
                eprintln!(
                    "error: usage: put KEY VALUE [NODE] | get KEY [NODE] | delete KEY [NODE]"
                );
                Flow::Failed
            }
            _ => self.cli_command(&words),
        }
    }

    fn target(&mut self, node: Option<&str>) -> Option<Client> {
        let addr = node.unwrap_or(&self.global.addr).to_string();
        match self.client(&addr) {
            Ok(client) => Some(client),
            Err(e) => {
                eprintln!("error: {e}");
                None
            }
        }
    }

    fn kv(&mut self, node: Option<&str>, command: Command) -> Flow {
        let Some(client) = self.target(node) else {
            return Flow::Failed;
        };
        let code = self.runtime.block_on(client_cmd::execute(&client, self.global.output, command));
        Flow::from_exit(code)
    }

    fn get(&mut self, node: Option<&str>, key: &str) -> Flow {
        let Some(client) = self.target(node) else {
            return Flow::Failed;
        };
        let code = self.runtime.block_on(client_cmd::kv_get(
            &client,
            self.global.output,
            key,
            Read::Linearizable,
        ));
        Flow::from_exit(code)
    }

    /// Any other line is parsed as a `cairn` command line.
    fn cli_command(&mut self, words: &[&str]) -> Flow {
        let argv = std::iter::once("cairn").chain(words.iter().copied());
        let cli = match Cli::try_parse_from(argv) {
            Ok(cli) => cli,
            Err(e) => {
                let rendered = e.render().to_string();
                eprintln!("{}", rendered.trim_end().replace("cairn <COMMAND>", "COMMAND"));
                eprintln!("(type 'help' for the shell's commands)");
                return Flow::Failed;
            }
        };
        if matches!(
            cli.command,
            Command::Node(_) | Command::Shell | Command::Bench(_) | Command::Watch(_)
        ) {
            eprintln!("error: '{}' does not run inside the shell", words[0]);
            return Flow::Failed;
        }
        // `--addr` on the line wins; otherwise the shell's node.
        let addr = if words.iter().any(|w| w.starts_with("--addr")) {
            cli.global.addr.clone()
        } else {
            self.global.addr.clone()
        };
        let Some(client) = self.target(Some(&addr)) else {
            return Flow::Failed;
        };
        let out = if words.iter().any(|w| w.starts_with("--output")) {
            cli.global.output
        } else {
            self.global.output
        };
        Flow::from_exit(self.runtime.block_on(client_cmd::execute(&client, out, cli.command)))
    }
}

#[derive(PartialEq, Eq)]
enum Flow {
    Ok,
    Failed,
    Quit,
}

impl Flow {
    fn from_exit(code: ExitCode) -> Flow {
        if code == ExitCode::SUCCESS {
            Flow::Ok
        } else {
            Flow::Failed
        }
    }
}

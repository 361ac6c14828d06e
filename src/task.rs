//! The task taxonomy: the closed set of task types that hints, routing configs, the classifier's
//! task head and the catalogue's per-task quality scores all share.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! tasks {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// A task type. The string form (snake_case) is what configs, hints and logs use.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Task { $($variant),* }

        impl Task {
            /// Every task, in the order of the classifier's output vector.
            pub const ALL: &'static [Task] = &[$(Task::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Task::$variant => $name),* }
            }
        }

        impl FromStr for Task {
            type Err = UnknownTask;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok(Task::$variant),)*
                    _ => Err(UnknownTask(s.to_string())),
                }
            }
        }
    };
}

tasks! {
    Code => "code",
    Math => "math",
    Reasoning => "reasoning",
    KnowledgeQa => "knowledge_qa",
    Extraction => "extraction",
    Summarization => "summarization",
    Classification => "classification",
    Rewrite => "rewrite",
    CreativeWriting => "creative_writing",
    Brainstorming => "brainstorming",
    Chat => "chat",
    Translation => "translation",
}

impl Task {
    pub const COUNT: usize = Task::ALL.len();

    /// Position in [`Task::ALL`] (and in the classifier's probability vector).
    pub fn index(self) -> usize {
        Task::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }

    /// The comma-separated list of valid names, for error messages.
    pub fn valid_names() -> String {
        Task::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task name that is not in the taxonomy.
#[derive(Debug, Clone)]
pub struct UnknownTask(pub String);

impl fmt::Display for UnknownTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown task '{}'; valid tasks are: {}", self.0, Task::valid_names())
    }
}

impl std::error::Error for UnknownTask {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Task::ALL {
            assert_eq!(t.as_str().parse::<Task>().unwrap(), *t);
            assert_eq!(Task::ALL[t.index()], *t);
        }
        assert_eq!(Task::COUNT, 12);
        let err = "poetry".parse::<Task>().unwrap_err().to_string();
        assert!(err.contains("creative_writing") && err.contains("poetry"));
    }
}

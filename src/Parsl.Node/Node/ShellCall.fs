namespace Parsl.Node

open System

/// Where a shell app's standard stream goes.
type StdStream =
    /// Append to this file (Parsl's plain path: mode `a+`).
    | Append of path: string
    /// Truncate this file first (Parsl's `(path, 'w')`).
    | Truncate of path: string

    /// The file's path.
    member this.Path =
        match this with
        | Append p
        | Truncate p -> p

/// A shell app's call, ready to run.
type ShellCall =
    { AppName: string
      /// Builds the command line (the user's function with resolved arguments). May throw: that fails the task.
      BuildCommand: unit -> string
      Stdout: StdStream option
      Stderr: StdStream option
      /// Kill the process group and raise `AppTimeout` after this long.
      Walltime: TimeSpan option
      /// Files that must exist afterwards (`MissingOutputs` otherwise).
      Outputs: string list }

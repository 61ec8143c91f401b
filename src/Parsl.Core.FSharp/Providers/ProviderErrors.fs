namespace Parsl.Providers

open Parsl

/// A provider failed to talk to its resource manager (Parsl's `ExecutionProviderException`).
type ExecutionProviderException(message: string, inner: exn) =
    inherit ParslException(message, inner)
    /// An error with a message.
    new(message: string) = ExecutionProviderException(message, null)

/// A block could not be submitted (Parsl's `SubmitException`): the submit command failed or printed no job id.
type SubmitException internal (jobName: string, message: string, exitCode: int option, stdout: string, stderr: string) =
    inherit ExecutionProviderException(
        sprintf "Cannot launch job %s: %s; exit code %s, stdout: %s, stderr: %s" jobName message
            (match exitCode with Some c -> string c | None -> "none") (stdout.Trim()) (stderr.Trim()))
    /// The block's job name.
    member _.JobName = jobName
    /// The submit command's exit code, when it ran (nullable rather than an F# option, for C#).
    member _.ExitCode: System.Nullable<int> = Option.toNullable exitCode
    /// What the submit command printed.
    member _.Stdout = stdout
    /// What the submit command printed on stderr.
    member _.Stderr = stderr

/// A command sent to the resource manager did not finish within the provider's `CmdTimeout`.
type CommandTimeoutException(command: string, seconds: float) =
    inherit ExecutionProviderException(
        sprintf "The command '%s' did not finish within %g s; raise the provider's CmdTimeout if the scheduler is slow" command seconds)
    /// The command.
    member _.Command = command

/// The channel (local shell or SSH connection) that runs a provider's commands failed.
type ChannelException(message: string, inner: exn) =
    inherit ExecutionProviderException(message, inner)

/// The SSH server presented a host key other than the one configured, so the connection was refused.
type HostKeyMismatchException(host: string, expected: string, actual: string) =
    inherit ChannelException(
        sprintf "The SSH host key of %s is %s, but HostKeyFingerprint expects %s: the connection was refused. If the server's key really changed, put the new fingerprint (ssh-keyscan %s | ssh-keygen -lf -) in the option" host actual expected host,
        null)
    /// The host.
    member _.Host = host
    /// The configured fingerprint.
    member _.Expected = expected
    /// The fingerprint the server presented.
    member _.Actual = actual

namespace Parsl.Runtime

open System.Threading
open Parsl
open Parsl.Executors

/// Runs shell apps (Parsl's `remote_side_bash_executor`).
[<RequireQualifiedAccess>]
module Shell =
    /// Runs one try of a shell app on the calling thread and returns boxed 0, or raises
    /// (`BashExitFailure`, `AppTimeout`, `MissingOutputs`, `OperationCanceledException`, ...).
    let run (call: ShellCall) (cancellation: CancellationToken) : obj =
        let cmd = call.BuildCommand()
        let psi = System.Diagnostics.ProcessStartInfo("/bin/bash")
        psi.ArgumentList.Add "-c"
        psi.ArgumentList.Add cmd
        use p = System.Diagnostics.Process.Start psi
        p.WaitForExitAsync(cancellation).Wait()
        if p.ExitCode <> 0 then raise (BashExitFailure(call.AppName, p.ExitCode))
        box 0

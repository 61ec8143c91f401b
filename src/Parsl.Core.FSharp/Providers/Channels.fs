namespace Parsl.Providers

open System
open System.Diagnostics
open System.IO
open System.Security.Cryptography
open System.Threading
open System.Threading.Tasks
open Renci.SshNet
open Renci.SshNet.Common

/// What a shell command returned.
type CommandResult =
    { ExitCode: int
      Stdout: string
      Stderr: string }

/// Runs a provider's scheduler commands and holds its scripts: this machine, or a login node over SSH.
///
///   provider ──ExecuteAsync("sbatch …")──▶ channel ──▶ bash -c (local) │ SSH exec (remote)
///   provider ──PushFileAsync(script)─────▶ channel ──▶ no-op (local)   │ SFTP upload (remote)
///   provider ──ReadSummaryAsync(path)────▶ channel ──▶ the job's stdout/stderr, head and tail
type IExecutionChannel =
    inherit IDisposable
    /// For messages: `local` or `ssh user@host:port`.
    abstract Describe: string
    /// Prepares the channel; returns the submit-script directory as the scheduler sees it.
    abstract OpenAsync: localScriptDir: string * CancellationToken -> Task<string>
    /// Runs a shell command; raises `CommandTimeoutException` past `timeout`.
    abstract ExecuteAsync: command: string * timeout: TimeSpan * CancellationToken -> Task<CommandResult>
    /// Makes a local file visible to the scheduler in `remoteDir`; returns its path there.
    abstract PushFileAsync: localPath: string * remoteDir: string * CancellationToken -> Task<string>
    /// A job output file's summary (Parsl's `stdout_summary`), None when absent or empty.
    abstract ReadSummaryAsync: path: string * CancellationToken -> Task<string option>

/// Runs commands with this machine's bash.
type LocalChannel() =
    let run (command: string) (timeout: TimeSpan) (ct: CancellationToken) =
        task {
            let psi = ProcessStartInfo("/bin/bash")
            psi.ArgumentList.Add "-c"
            psi.ArgumentList.Add command
            psi.RedirectStandardOutput <- true
            psi.RedirectStandardError <- true
            psi.RedirectStandardInput <- true
            psi.UseShellExecute <- false
            use p = new Process(StartInfo = psi)
            if not (p.Start()) then raise (ChannelException(sprintf "could not start bash for '%s'" command, null))
            p.StandardInput.Close()
            let out = p.StandardOutput.ReadToEndAsync()
            let err = p.StandardError.ReadToEndAsync()
            use limit = CancellationTokenSource.CreateLinkedTokenSource ct
            limit.CancelAfter timeout
            try
                do! p.WaitForExitAsync limit.Token
            with :? OperationCanceledException ->
                try p.Kill true with _ -> ()
                if ct.IsCancellationRequested then ct.ThrowIfCancellationRequested()
                raise (CommandTimeoutException(command, timeout.TotalSeconds))
            let! o = out
            let! e = err
            return { ExitCode = p.ExitCode; Stdout = o; Stderr = e }
        }

    interface IExecutionChannel with
        member _.Describe = "local"
        member _.OpenAsync(localScriptDir, _) =
            Directory.CreateDirectory localScriptDir |> ignore
            Task.FromResult(Path.GetFullPath localScriptDir)
        member _.ExecuteAsync(command, timeout, ct) = run command timeout ct
        member _.PushFileAsync(localPath, remoteDir, _) =
            let target = Path.Combine(remoteDir, Path.GetFileName localPath)
            if Path.GetFullPath target <> Path.GetFullPath localPath then File.Copy(localPath, target, true)
            Task.FromResult target
        member _.ReadSummaryAsync(path, _) =
            task {
                if not (File.Exists path) then return None
                else
                    use f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite)
                    use r = new StreamReader(f)
                    let! text = r.ReadToEndAsync()
                    return BatchJobs.summary text
            }
        member _.Dispose() = ()

/// Runs commands on a login node over SSH (SSH.NET) and copies scripts there with SFTP. One connection, opened
/// on first use and reopened if it drops; the server's host key must match `HostKeyFingerprint`.
type SshChannel(options: SshOptions) =
    let gate = new SemaphoreSlim(1, 1)
    let mutable ssh: SshClient option = None
    let mutable sftp: SftpClient option = None
    let mutable presented: string option = None

    let connectionInfo () =
        let methods: AuthenticationMethod list =
            [ match options.PrivateKeyFile with
              | Some file ->
                  let key =
                      match options.PrivateKeyPassphrase with
                      | Some pass -> new PrivateKeyFile(file, pass)
                      | None -> new PrivateKeyFile(file)
                  new PrivateKeyAuthenticationMethod(options.Username, [| key :> IPrivateKeySource |]) :> AuthenticationMethod
              | None -> ()
              match options.Password with
              | Some pw -> new PasswordAuthenticationMethod(options.Username, pw) :> AuthenticationMethod
              | None -> () ]
        let info = ConnectionInfo(options.Host, options.Port, options.Username, Array.ofList methods)
        info.Timeout <- options.ConnectTimeout
        info

    let checkHostKey (e: HostKeyEventArgs) =
        let sha = "SHA256:" + e.FingerPrintSHA256
        presented <- Some sha
        e.CanTrust <-
            options.AcceptAnyHostKey
            || (match options.HostKeyFingerprint with
                | Some fp when fp.StartsWith("SHA256:", StringComparison.Ordinal) -> String.Equals(fp.TrimEnd('='), sha, StringComparison.Ordinal)
                | Some fp -> String.Equals(fp.Replace("MD5:", ""), e.FingerPrintMD5, StringComparison.OrdinalIgnoreCase)
                | None -> false)

    let connect (client: BaseClient) =
        client.HostKeyReceived.Add checkHostKey
        try
            client.Connect()
        with
        | :? SshConnectionException
        | :? SshException when presented.IsSome && not options.AcceptAnyHostKey
                              && (match options.HostKeyFingerprint with
                                  | Some fp -> not (String.Equals(fp.TrimEnd('='), presented.Value, StringComparison.Ordinal))
                                  | None -> true) ->
            raise (HostKeyMismatchException(sprintf "%s:%d" options.Host options.Port, defaultArg options.HostKeyFingerprint "(none)", presented.Value))
        | e -> raise (ChannelException(sprintf "SSH connection to %s@%s:%d failed: %s" options.Username options.Host options.Port e.Message, e))

    let ensure () =
        match ssh, sftp with
        | Some s, Some f when s.IsConnected && f.IsConnected -> s, f
        | _ ->
            ssh |> Option.iter (fun c -> c.Dispose())
            sftp |> Option.iter (fun c -> c.Dispose())
            let s = new SshClient(connectionInfo ())
            connect s
            let f = new SftpClient(connectionInfo ())
            connect f
            ssh <- Some s
            sftp <- Some f
            s, f

    let locked (f: unit -> Task<'T>) (ct: CancellationToken) =
        task {
            do! gate.WaitAsync ct
            try return! f () finally gate.Release() |> ignore
        }

    let exec (command: string) (timeout: TimeSpan) (ct: CancellationToken) =
        task {
            let s, _ = ensure ()
            // The limit is enforced on the login node: cancelling an SSH exec waits for the remote process to end,
            // and sshd may ignore signal requests, so a stuck scheduler command would otherwise hold the channel.
            let seconds = max 1 (int (Math.Ceiling timeout.TotalSeconds))
            use cmd = s.CreateCommand(sprintf "timeout -k 5 %d bash -c %s" seconds (BatchJobs.shellQuote command))
            use limit = CancellationTokenSource.CreateLinkedTokenSource ct
            limit.CancelAfter(timeout + TimeSpan.FromSeconds 15.0)
            let clock = Stopwatch.StartNew()
            try
                do! cmd.ExecuteAsync limit.Token
            with :? OperationCanceledException ->
                if ct.IsCancellationRequested then ct.ThrowIfCancellationRequested()
                raise (CommandTimeoutException(command, timeout.TotalSeconds))
            let code = if cmd.ExitStatus.HasValue then cmd.ExitStatus.Value else -1
            // timeout(1) exits 124 when it stopped the command (137 when it had to KILL it).
            if (code = 124 || code = 137) && clock.Elapsed >= timeout then raise (CommandTimeoutException(command, timeout.TotalSeconds))
            return { ExitCode = code; Stdout = cmd.Result; Stderr = cmd.Error }
        }

    /// The fingerprint the server presented last (`SHA256:...`), once connected or refused.
    member _.PresentedFingerprint = presented

    interface IExecutionChannel with
        member _.Describe = sprintf "ssh %s@%s:%d" options.Username options.Host options.Port
        member _.OpenAsync(_, ct) =
            locked (fun () ->
                task {
                    let dir = BatchJobs.shellQuote options.RemoteScriptDir
                    let! r = exec (sprintf "mkdir -p -- %s && cd -- %s && pwd -P" dir dir) options.ConnectTimeout ct
                    if r.ExitCode <> 0 then
                        raise (ChannelException(sprintf "cannot create RemoteScriptDir '%s' on %s: %s" options.RemoteScriptDir options.Host (r.Stderr.Trim()), null))
                    return r.Stdout.Trim()
                }) ct
        member _.ExecuteAsync(command, timeout, ct) = locked (fun () -> exec command timeout ct) ct
        member _.PushFileAsync(localPath, remoteDir, ct) =
            locked (fun () ->
                task {
                    let _, f = ensure ()
                    let target = remoteDir.TrimEnd('/') + "/" + Path.GetFileName localPath
                    use source = File.OpenRead localPath
                    do! f.UploadFileAsync(source, target, ct)
                    return target
                }) ct
        member _.ReadSummaryAsync(path, ct) =
            locked (fun () ->
                task {
                    let q = BatchJobs.shellQuote path
                    // Head and tail on the remote side, so a huge log is never copied whole.
                    let! r =
                        exec (sprintf "[ -f %s ] || exit 3; n=$(wc -c < %s); if [ \"$n\" -le 2048 ]; then cat %s; else head -c 1024 %s; printf '\\n...\\n'; tail -c 1024 %s; fi" q q q q q)
                            options.ConnectTimeout ct
                    return if r.ExitCode = 0 && r.Stdout.Length > 0 then Some r.Stdout else None
                }) ct
        member _.Dispose() =
            ssh |> Option.iter (fun c -> c.Dispose())
            sftp |> Option.iter (fun c -> c.Dispose())
            ssh <- None
            sftp <- None

/// Creates channels from options.
[<RequireQualifiedAccess>]
module Channels =
    /// The channel an option value describes.
    let create (c: Channel) : IExecutionChannel =
        match c with
        | Local -> new LocalChannel()
        | Ssh o -> new SshChannel(o)

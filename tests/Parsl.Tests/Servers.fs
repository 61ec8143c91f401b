/// Real servers on loopback for staging tests: an HTTP server (System.Net.HttpListener) and an FTP server
/// (Debian's vsftpd, installed by the test itself when it runs as root).
module Parsl.Tests.Servers

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks

/// A port that was free a moment ago.
let freePort () =
    let l = new TcpListener(IPAddress.Loopback, 0)
    l.Start()
    let p = (l.LocalEndpoint :?> IPEndPoint).Port
    l.Stop()
    p

/// Serves `files` (path -> bytes) at http://127.0.0.1:PORT/; anything else is 404. Counts requests per path.
type HttpServer(files: Map<string, byte[]>) =
    let port = freePort ()
    let listener = new HttpListener()
    do listener.Prefixes.Add(sprintf "http://127.0.0.1:%d/" port)
    do listener.Start()
    let requests = ConcurrentDictionary<string, int>()
    let loop =
        Task.Run(fun () ->
            task {
                let mutable go = true
                while go do
                    try
                        let! ctx = listener.GetContextAsync()
                        let path = ctx.Request.Url.AbsolutePath
                        requests.AddOrUpdate(path, 1, fun _ n -> n + 1) |> ignore
                        match Map.tryFind path files with
                        | Some body ->
                            ctx.Response.StatusCode <- 200
                            ctx.Response.ContentLength64 <- int64 body.Length
                            do! ctx.Response.OutputStream.WriteAsync(body, 0, body.Length)
                        | None -> ctx.Response.StatusCode <- 404
                        ctx.Response.Close()
                    with
                    | :? ObjectDisposedException
                    | :? HttpListenerException -> go <- false
            }
            :> Task)

    /// The server's base URL, without a trailing slash.
    member _.Url = sprintf "http://127.0.0.1:%d" port
    /// How many requests asked for this path.
    member _.Requests(path: string) = match requests.TryGetValue path with | true, n -> n | _ -> 0

    interface IDisposable with
        member _.Dispose() =
            listener.Stop()
            // Close after Stop looks the port up again, and another test may hold it by then: nothing is left to free.
            try listener.Close() with :? HttpListenerException -> ()
            loop.Wait(TimeSpan.FromSeconds 10.0) |> ignore

let private vsftpd = "/usr/sbin/vsftpd"

let private installLock = obj ()

/// Makes sure vsftpd is installed: installs it with apt-get when running as root; otherwise fails saying what
/// is missing.
let ensureVsftpd () =
  // Two FTP tests run at once: one installs while the other waits (dpkg takes one installer at a time).
  lock installLock (fun () ->
    if not (File.Exists vsftpd) then
        if Environment.UserName <> "root" then
            failwith "The FTP staging tests need vsftpd (Debian package 'vsftpd'); run them as root or install it: apt-get install -y vsftpd"
        let run (args: string) =
            let psi = ProcessStartInfo("apt-get", "-o DPkg::Lock::Timeout=600 " + args)
            psi.Environment["DEBIAN_FRONTEND"] <- "noninteractive"
            psi.RedirectStandardOutput <- true
            psi.RedirectStandardError <- true
            use p = Process.Start psi
            let out = p.StandardOutput.ReadToEndAsync()
            let err = p.StandardError.ReadToEnd()
            p.WaitForExit()
            p.ExitCode, out.Result + err
        let code, out = run "install -y vsftpd"
        if code <> 0 then
            run "update" |> ignore
            let code, out2 = run "install -y vsftpd"
            if code <> 0 then failwithf "Installing vsftpd failed:\n%s\n%s" out out2
    Directory.CreateDirectory "/var/run/vsftpd/empty" |> ignore)

/// vsftpd serving `root` to anonymous users on 127.0.0.1, started for one test and killed at disposal.
type FtpServer(root: string) =
    do ensureVsftpd ()
    let port = freePort ()
    let pasv = freePort ()
    let dir = Path.Combine(Path.GetTempPath(), "parsl-tests", "vsftpd-" + Guid.NewGuid().ToString("N"))
    do Directory.CreateDirectory dir |> ignore
    let conf = Path.Combine(dir, "vsftpd.conf")
    do
        File.WriteAllText(
            conf,
            String.concat
                "\n"
                [ "listen=YES"
                  "listen_ipv6=NO"
                  "listen_address=127.0.0.1"
                  sprintf "listen_port=%d" port
                  "background=NO"
                  "anonymous_enable=YES"
                  "no_anon_password=YES"
                  "local_enable=NO"
                  "write_enable=NO"
                  sprintf "anon_root=%s" root
                  "pasv_enable=YES"
                  "pasv_address=127.0.0.1"
                  sprintf "pasv_min_port=%d" pasv
                  sprintf "pasv_max_port=%d" pasv
                  "secure_chroot_dir=/var/run/vsftpd/empty"
                  "seccomp_sandbox=NO"
                  "xferlog_enable=NO"
                  "dual_log_enable=NO"
                  "syslog_enable=NO"
                  sprintf "vsftpd_log_file=%s" (Path.Combine(dir, "vsftpd.log"))
                  "" ])
    let proc =
        let psi = ProcessStartInfo(vsftpd, conf)
        psi.RedirectStandardOutput <- true
        psi.RedirectStandardError <- true
        Process.Start psi
    let stderr = proc.StandardError.ReadToEndAsync()
    do
        // Readiness: the port accepts a connection (bounded; vsftpd starts in milliseconds).
        let deadline = DateTime.UtcNow.AddSeconds 20.0
        let mutable ready = false
        while not ready do
            if proc.HasExited then failwithf "vsftpd exited with %d: %s" proc.ExitCode stderr.Result
            try
                use c = new TcpClient()
                c.Connect(IPAddress.Loopback, port)
                ready <- true
            with :? SocketException ->
                if DateTime.UtcNow > deadline then failwith "vsftpd did not listen within 20 s"
                Thread.Yield() |> ignore

    /// `ftp://127.0.0.1:PORT`.
    member _.Url = sprintf "ftp://127.0.0.1:%d" port

    interface IDisposable with
        member _.Dispose() =
            if not proc.HasExited then proc.Kill true
            proc.WaitForExit()
            proc.Dispose()

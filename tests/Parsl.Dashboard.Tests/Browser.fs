/// Debian's Chromium, driven over the DevTools protocol by PuppeteerSharp.
module Parsl.Dashboard.Tests.Browser

open System
open System.Diagnostics
open System.IO
open PuppeteerSharp

let executable = "/usr/bin/chromium"

let private installLock = obj ()

/// Installs Debian's `chromium` when it is missing and this runs as root; otherwise fails saying what is missing.
let ensureChromium () =
    lock installLock (fun () ->
        if not (File.Exists executable) then
            if Environment.UserName <> "root" then
                failwith "The dashboard's browser tests need Chromium (Debian package 'chromium' at /usr/bin/chromium); run them as root or install it: apt-get install -y chromium"
            let run (args: string) =
                let psi = ProcessStartInfo("apt-get", "-o DPkg::Lock::Timeout=600 " + args, RedirectStandardOutput = true, RedirectStandardError = true)
                psi.Environment["DEBIAN_FRONTEND"] <- "noninteractive"
                use p = Process.Start psi
                let out = p.StandardOutput.ReadToEndAsync()
                let err = p.StandardError.ReadToEnd()
                p.WaitForExit()
                p.ExitCode, out.Result + err
            let code, out = run "install -y --no-install-recommends chromium"
            if code <> 0 then
                run "update" |> ignore
                let code, out2 = run "install -y --no-install-recommends chromium"
                if code <> 0 then failwithf "Installing chromium failed:\n%s\n%s" out out2)

/// The repository's root (where Parsl.slnx is), for `artifacts/`.
let repoRoot () =
    let rec up (d: DirectoryInfo) =
        if isNull d then Directory.GetCurrentDirectory()
        elif File.Exists(Path.Combine(d.FullName, "Parsl.slnx")) then d.FullName
        else up d.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

/// Where screenshots go.
let artifacts () =
    let d = Path.Combine(repoRoot (), "artifacts", "dashboard")
    Directory.CreateDirectory d |> ignore
    d

/// A headless Chromium (`--no-sandbox`: as root it refuses to start otherwise), closed at disposal.
let launch () =
    ensureChromium ()
    let options =
        LaunchOptions(
            Headless = true,
            ExecutablePath = executable,
            Args = [| "--no-sandbox"; "--disable-gpu"; "--disable-dev-shm-usage" |],
            Timeout = 60000)
    Puppeteer.LaunchAsync(options).GetAwaiter().GetResult()

using System.Diagnostics;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>The CCTools workers the Work Queue and TaskVine tests run: installed or built by a script under
/// tests/harness (as root), then started by hand against the manager on loopback.</summary>
internal static class CctoolsWorkers
{
    /// <summary>Runs tests/harness/<paramref name="script"/> and returns its <c>READY key=value …</c> line; fails
    /// naming <paramref name="system"/> and the harness's own words when this machine cannot run it.</summary>
    public static string Ready(string script, string system)
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "tests", "harness", script))) dir = dir.Parent;
        if (dir is null) throw new InvalidOperationException($"tests/harness/{script} not found above the test binary");
        var psi = new ProcessStartInfo("/bin/bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(dir.FullName, "tests", "harness", script));
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var line = p.StandardOutput.ReadToEnd().Trim();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"the {system} harness cannot run here (exit {p.ExitCode}): {err.Result}");
        return line;
    }

    /// <summary>The value of <paramref name="key"/> in a harness's READY line.</summary>
    public static string Field(string line, string key) =>
        line.Split(' ').First(w => w.StartsWith(key + "=", StringComparison.Ordinal))[(key.Length + 1)..];

    /// <summary>A loopback port free now, for a manager whose workers are started by hand.</summary>
    public static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        var port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    /// <summary>Starts worker <paramref name="exe"/> with one core, the password file and its own work folder, against
    /// the manager on 127.0.0.1:<paramref name="port"/>; it gives up after 60 s without a manager.</summary>
    public static Process Start(string exe, int port, string workDir, string passwordFile)
    {
        Directory.CreateDirectory(workDir);
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--password", passwordFile, "-s", workDir, "-t", "60", "--cores", "1", "127.0.0.1", port.ToString() })
            psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }

    private static int Square(int x) => x * x;

    private static int Refuse(int x) => throw new ArgumentOutOfRangeException(nameof(x), x, "refused");

    /// <summary>Function apps (a chain of two static methods and a lambda, an app's own exception coming back as
    /// itself) and a shell app seeing the executor's <c>Env</c> (GREETING=hi) run on the workers of
    /// <paramref name="dfk"/>.</summary>
    public static async Task AppsRunAsync(Dfk dfk)
    {
        var square = dfk.App<int, int>(Square);
        var plus = dfk.App((int x) => x + 1);
        Assert.Equal(82, await plus.Invoke(square.Invoke(9)).Within());
        var e = await FailureOf(dfk.App<int, int>(Refuse).Invoke(5));
        Assert.IsType<ArgumentOutOfRangeException>(e);
        var dir = TempRunDir();
        var greet = dfk.ShellApp((string name) => $"echo $GREETING {name} > {dir}/greeting");
        Assert.Equal(0, await greet.Invoke("ada").Within());
        Assert.Equal("hi ada\n", File.ReadAllText(Path.Combine(dir, "greeting")));
    }
}

using System.Threading;
using Microsoft.FSharp.Collections;
using Parsl.Providers;
using Xunit.Abstractions;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>The SSH channel from C# options against a real sshd on loopback (tests/harness/sshd.sh) and the real
/// Slurm behind it: the host key fingerprint decides whether the provider may talk to the login node.</summary>
public class SshChannelTests(ITestOutputHelper output)
{
    private static string Field(string ready, string key) =>
        ready.Split(' ').First(w => w.StartsWith(key + "=", StringComparison.Ordinal))[(key.Length + 1)..];

    private bool Ready(out SshChannelOptions ssh)
    {
        ssh = null!;
        foreach (var daemon in new[] { "sshd", "slurm" })
            if (!Harness.Require(daemon, out var why))
            {
                output.WriteLine($"SKIPPED: the {daemon} harness cannot run here: {why}");
                return false;
            }
        Harness.Require("sshd", out var line);
        var ready = line.Split('\n').Last(l => l.StartsWith("READY", StringComparison.Ordinal));
        ssh = new SshChannelOptions
        {
            Host = "127.0.0.1", Port = int.Parse(Field(ready, "port")), Username = Field(ready, "user"),
            PrivateKeyFile = Field(ready, "key"), HostKeyFingerprint = Field(ready, "fingerprint"),
            RemoteScriptDir = $"/tmp/parsl-ssh-{Guid.NewGuid():N}",
        };
        return true;
    }

    [Fact]
    public async Task With_the_servers_fingerprint_sbatch_runs_on_the_login_node_over_SSH()
    {
        if (!Ready(out var ssh)) return;
        var options = new SlurmProviderOptions { Exclusive = false, Walltime = "00:02:00", CmdTimeout = TimeSpan.FromSeconds(30), Channel = ssh };
        using var provider = (IDisposable)options.Build();
        var p = (IExecutionProvider)provider;
        p.Initialize(new ProviderContext(Path.Combine(TempRunDir(), "submit_scripts"), Serilog.Core.Logger.None));
        var marker = Path.Combine(ssh.RemoteScriptDir, "ran");
        var id = await p.SubmitAsync($"echo $SLURM_JOB_ID > {marker}; sleep 60", 1, "parsl.cs.block-0", CancellationToken.None).WaitAsync(Limit);
        try
        {
            Assert.NotEmpty(Directory.GetFiles(ssh.RemoteScriptDir, "parsl.cs.block-0.*"));
            var clock = System.Diagnostics.Stopwatch.StartNew();
            // The job's own file is the event: Slurm starts it when it likes.
            while (!(File.Exists(marker) && File.ReadAllText(marker).Trim() == id))
            {
                Assert.True(clock.Elapsed < TimeSpan.FromSeconds(90), "the job did not write its id within 90 s");
                await Task.Delay(200);
            }
        }
        finally
        {
            await p.CancelAsync(ListModule.OfSeq([id]), CancellationToken.None);
        }
    }

    [Fact]
    public async Task A_wrong_fingerprint_is_refused_and_the_executors_tasks_fail_saying_so()
    {
        if (!Ready(out var ssh)) return;
        ssh.HostKeyFingerprint = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        await using var dfk = await LoadAsync(o => o.Executors.Add(new HighThroughputExecutorOptions
        {
            Label = "remote", StrategyPeriod = TimeSpan.FromMilliseconds(200),
            Provider = new SlurmProviderOptions { Channel = ssh, CmdTimeout = TimeSpan.FromSeconds(30), StatusPollingInterval = TimeSpan.FromMilliseconds(500) },
        }));
        var e = await FailureOf(dfk.App((int x) => x).Invoke(1));
        Assert.IsType<BadStateException>(e);
        Assert.Contains("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", e.Message);
        Assert.DoesNotContain(await dfk.BlocksAsync(), b => b.State == BlockState.Running);
    }
}

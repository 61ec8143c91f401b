using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Parsl.CSharp.Tests;

/// <summary>Runs every example as its own process, as a user would, and checks what it prints.</summary>
public class ExampleTests
{
    private static readonly TimeSpan ProcessLimit = TimeSpan.FromMinutes(5);

    internal static string RepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Parsl.slnx"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("Parsl.slnx not found above " + AppContext.BaseDirectory);
    }

    // bin/<Configuration>/net10.0/: the examples were built with the same configuration as this project.
    private static string Configuration => new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name;

    internal static async Task<(int ExitCode, string Output)> RunAsync(string workingDirectory, params string[] arguments)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardOutputEncoding = Encoding.UTF8,
        };
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            await process.WaitForExitAsync().WaitAsync(ProcessLimit);
        }
        catch (TimeoutException)
        {
            process.Kill(entireProcessTree: true);
            throw new Xunit.Sdk.XunitException($"dotnet {string.Join(' ', arguments)} did not finish within {ProcessLimit}");
        }
        return (process.ExitCode, await stdout + await stderr);
    }

    private static string BuiltExample(string name, string extension = ".dll")
    {
        var path = Path.Combine(RepoRoot(), "examples", name, "bin", Configuration, "net10.0", name + extension);
        Assert.True(File.Exists(path), $"{path} is missing: build the solution first");
        return path;
    }

    [Fact]
    public async Task Quickstart_estimates_pi_and_runs_its_shell_stage()
    {
        var (code, output) = await RunAsync(TestKernel.TempRunDir(), BuiltExample("Quickstart"));
        Assert.True(code == 0, output);
        var match = Regex.Match(output, @"pi ≈ (\d+\.\d+) from 12,800,000 samples in 64 tasks \(task 64: ExecDone\)");
        Assert.True(match.Success, output);
        var pi = double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.InRange(pi, Math.PI - 0.01, Math.PI + 0.01);
        Assert.Matches(@"shell app wrote .*pi\.txt: pi is about \d\.\d{5}", output);
        Assert.Matches(@"done in \d+\.\d\d s", output);
    }

    [Fact]
    public async Task FSharpWorkflow_runs_its_parsl_workflow()
    {
        var (code, output) = await RunAsync(TestKernel.TempRunDir(), BuiltExample("FSharpWorkflow"));
        Assert.True(code == 0, output);
        Assert.Contains("sum of 1..1000 (shell app + function app) = 500500", output);
        Assert.Contains("sum of squares of 1..10 (fan-out)         = 385", output);
        Assert.Contains("workflow: task 0, exec_done", output);
    }

    [Fact]
    public async Task The_FAKE_script_builds_a_program_with_parallel_shell_steps()
    {
        var root = RepoRoot();
        var core = Path.Combine(root, "src", "Parsl.Core.FSharp", "bin", "Release", "net10.0", "Parsl.Core.FSharp.dll");
        Assert.True(File.Exists(core), $"{core} is missing: the script references the Release build of the library");
        var (code, output) = await RunAsync(root, "fsi", Path.Combine("examples", "fake", "build.fsx"));
        Assert.True(code == 0, output);
        Assert.Matches(@"compiled 9 files in parallel and linked them in \d+\.\d\d s", output);
        Assert.Contains("the program says: sum of 8 units = 36", output);
        Assert.Contains("Status:    Ok", output);
    }

    [Fact]
    public async Task A_script_runs_shell_apps_on_HTEx_and_a_function_app_there_fails_naming_the_fix()
    {
        var root = RepoRoot();
        foreach (var built in new[] { Path.Combine("Parsl.Core.FSharp", "bin", "Release", "net10.0", "Parsl.Core.FSharp.dll"),
                                      Path.Combine("Parsl.Workers", "bin", "Release", "net10.0", "Parsl.Workers.dll") })
        {
            var path = Path.Combine(root, "src", built);
            Assert.True(File.Exists(path), $"{path} is missing: the script references the Release build");
        }
        var (code, output) = await RunAsync(root, "fsi", Path.Combine("examples", "fake", "htex.fsx"));
        Assert.True(code == 0, output);
        // 1..100 + 1..200 + ... + 1..600, each part generated by a shell app on a worker, summed by another.
        Assert.Contains("sum of the 6 generated parts: 456050", output);
        Assert.Contains("shell apps ran in: a Parsl.Workers process", output);
        Assert.Contains("function app on htex: SerializationError: app double cannot run on HighThroughputExecutor 'htex'", output);
        Assert.Contains("define the function in a compiled project", output);
        Assert.Contains("or run this app on a ThreadPoolExecutor", output);
        Assert.Contains("function app on the thread pool: 42", output);
    }
}

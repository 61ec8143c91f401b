namespace Parsl.CSharp.Tests;

/// <summary>The façade's generated files are exactly what their generator writes today: a hand edit of a
/// <c>.g.cs</c> file, or a change to the pattern in <c>Arities.fsx</c> that was not regenerated, fails here.</summary>
public class GeneratedFilesTests
{
    private const string Generator = "src/Parsl.CSharp/Arities.fsx";
    private static readonly string[] Generated = ["App.Arities.g.cs", "Dfk.Apps.g.cs"];

    [Fact]
    public async Task The_generated_app_files_are_what_Arities_fsx_writes()
    {
        var root = ExampleTests.RepoRoot();
        var output = Directory.CreateTempSubdirectory("parsl-arities-");
        try
        {
            var (code, log) = await ExampleTests.RunAsync(root, "fsi", Generator, output.FullName);
            Assert.True(code == 0, $"dotnet fsi {Generator} failed:\n{log}");
            var stale = new List<string>();
            foreach (var name in Generated)
            {
                var committed = Path.Combine(root, "src", "Parsl.CSharp", name);
                var difference = FirstDifference(File.ReadAllText(committed), File.ReadAllText(Path.Combine(output.FullName, name)));
                if (difference is not null) stale.Add($"src/Parsl.CSharp/{name} {difference}");
            }
            Assert.True(
                stale.Count == 0,
                $"{string.Join("\n", stale)}\nThese files are generated: edit the pattern in {Generator}, not the file, " +
                $"then regenerate them with `dotnet fsi {Generator}` and commit the result.");
        }
        finally
        {
            output.Delete(recursive: true);
        }
    }

    /// <summary>Where two texts first differ, by line (line endings ignored: a checkout may convert them); null if
    /// they are the same.</summary>
    private static string? FirstDifference(string committed, string generated)
    {
        var a = committed.ReplaceLineEndings("\n").Split('\n');
        var b = generated.ReplaceLineEndings("\n").Split('\n');
        for (var i = 0; i < Math.Max(a.Length, b.Length); i++)
        {
            var left = i < a.Length ? a[i] : "<end of file>";
            var right = i < b.Length ? b[i] : "<end of file>";
            if (left != right)
                return $"differs from what the generator writes, first at line {i + 1}:\n  file:      {left.Trim()}\n  generated: {right.Trim()}";
        }
        return null;
    }
}

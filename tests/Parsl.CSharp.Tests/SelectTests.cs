using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>A result with fields, to project.</summary>
public sealed record Person(string Name, int Age);

/// <summary>Lifted results (Parsl's <c>fut["a"]</c>, <c>fut.attr</c>): <c>Select</c> and LINQ query syntax.</summary>
public class SelectTests
{
    [Fact]
    public async Task Select_gives_an_AppFuture_of_the_projection_usable_as_a_dependency()
    {
        await using var dfk = await LoadAsync();
        var person = dfk.App((string n) => new Person(n, n.Length * 10));
        var upper = dfk.App((string s) => s.ToUpperInvariant());
        var source = person.Invoke("ada");
        AppFuture<string> name = source.Select(p => p.Name);
        Assert.NotEqual(source.TaskId, name.TaskId);
        Assert.Equal("ADA", await upper.Invoke(name).Within());
        Assert.Equal("ada", await name.Within());
        Assert.Equal(States.ExecDone, name.Status);
    }

    [Fact]
    public async Task Query_syntax_projects_and_combines_futures()
    {
        await using var dfk = await LoadAsync();
        var person = dfk.App((string n) => new Person(n, n.Length));
        var age = from p in person.Invoke("grace") select p.Age;
        Assert.Equal(5, await age.Within());
        var sum = from a in person.Invoke("x")
                  from b in person.Invoke("yy")
                  select a.Age + b.Age;
        Assert.Equal(3, await sum.Within());
        var add = dfk.App((int x, int y) => x + y);
        Assert.Equal(8, await add.Invoke(age, sum).Within());
    }

    [Fact]
    public async Task A_failed_source_fails_the_projection_with_DependencyError_and_a_throwing_selector_with_its_exception()
    {
        await using var dfk = await LoadAsync();
        var fail = dfk.App((int x) => x > 0 ? throw new InvalidOperationException("no " + x) : new Person("p", 1));
        var bad = fail.Invoke(3);
        var e = Assert.IsType<DependencyError>(await FailureOf(bad.Select(p => p.Name)));
        Assert.IsType<InvalidOperationException>(e.InnerException);
        var ok = dfk.App((int x) => new Person("p", x));
        var thrown = await FailureOf(ok.Invoke(0).Select<Person, int>(p => throw new ArgumentException("selector")));
        Assert.Equal("selector", thrown.Message);
        Assert.Throws<ArgumentNullException>(() => ok.Invoke(1).Select<Person, int>(null!));
    }
}

namespace Parsl;

/// <summary>Facts about this build of Parsl.NET.</summary>
public static class ParslInfo
{
    /// <summary>The library version.</summary>
    public static string Version => typeof(ParslInfo).Assembly.GetName().Version?.ToString() ?? "0.0.0";
}

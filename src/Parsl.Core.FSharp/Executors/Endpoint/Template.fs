namespace Parsl.Executors.Endpoint

open System
open System.Text.RegularExpressions

/// One key a client may set through `UserEndpointConfig`: its default, and the values allowed (a regular
/// expression the whole value must match).
type TemplateKey = { Default: string; Pattern: string }

/// Why a `UserEndpointConfig` was refused.
type TemplateError =
    /// The template has no such key.
    | UnknownKey of key: string * allowed: string list
    /// The value does not match the key's pattern.
    | BadValue of key: string * value: string * pattern: string

/// Renders an endpoint's engine settings from its template and a client's `UserEndpointConfig` (Globus Compute's
/// `user_config_template.yaml.j2` checked against its schema, with `{{key}}` placeholders instead of Jinja).
/// Pure: no IO.
[<RequireQualifiedAccess>]
module Template =
    let private placeholder = Regex(@"\{\{\s*([A-Za-z0-9_]+)\s*\}\}", RegexOptions.CultureInvariant)

    /// The message a client sees for a refusal.
    let describe (e: TemplateError) =
        match e with
        | UnknownKey(k, allowed) ->
            sprintf "UserEndpointConfig key '%s' is not allowed by this endpoint's template; allowed keys: %s" k
                (if allowed.IsEmpty then "none" else String.Join(", ", allowed))
        | BadValue(k, v, p) ->
            sprintf "UserEndpointConfig value '%s' for key '%s' does not match the template's pattern %s" v k p

    /// The values to fill in: the client's, checked, over the template's defaults.
    let values (template: Map<string, TemplateKey>) (userConfig: (string * string) list) : Result<Map<string, string>, TemplateError> =
        let allowed = template |> Map.toList |> List.map fst
        let rec go (acc: Map<string, string>) rest =
            match rest with
            | [] -> Ok acc
            | (k, v) :: tail ->
                match Map.tryFind k template with
                | None -> Error(UnknownKey(k, allowed))
                | Some t when not (Regex.IsMatch((v: string), "^(?:" + t.Pattern + ")$", RegexOptions.CultureInvariant)) ->
                    Error(BadValue(k, v, t.Pattern))
                | Some _ -> go (Map.add k v acc) tail
        go (template |> Map.map (fun _ t -> t.Default)) userConfig

    /// Fills `{{key}}` placeholders in every setting; a placeholder the template does not define stays an error.
    let render (template: Map<string, TemplateKey>) (settings: Map<string, string>) (userConfig: (string * string) list) =
        values template userConfig
        |> Result.bind (fun vals ->
            let missing =
                settings
                |> Map.toSeq
                |> Seq.collect (fun (_, v) -> placeholder.Matches v |> Seq.map (fun m -> m.Groups[1].Value))
                |> Seq.tryFind (fun k -> not (Map.containsKey k vals))
            match missing with
            | Some k -> Error(UnknownKey(k, vals |> Map.toList |> List.map fst))
            | None ->
                Ok(settings |> Map.map (fun _ v -> placeholder.Replace(v, fun m -> vals[m.Groups[1].Value]))))

    /// A stable key for a rendered configuration (one kernel per distinct rendering).
    let identity (rendered: Map<string, string>) =
        rendered |> Map.toList |> List.map (fun (k, v) -> k + "=" + v) |> String.concat "\n"

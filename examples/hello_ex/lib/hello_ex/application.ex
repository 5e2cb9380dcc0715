defmodule HelloEx.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    port = String.to_integer(System.get_env("PORT") || "4000")
    cluster()
    children = [{HelloEx.Server, port}]
    Supervisor.start_link(children, strategy: :one_for_one, name: HelloEx.Supervisor)
  end

  # Connect to the app's other nodes now and every 5 s (new ones come with each deploy):
  # the clustering ferry's README describes, with FERRY_PEERS_FILE.
  defp cluster do
    with path when is_binary(path) <- System.get_env("FERRY_PEERS_FILE") do
      Task.start(fn ->
        Stream.repeatedly(fn ->
          peers = if File.exists?(path), do: File.read!(path) |> String.split("\n", trim: true), else: []
          for peer <- peers, do: Node.connect(String.to_atom(peer))
          Process.sleep(5_000)
        end)
        |> Stream.run()
      end)
    end
  end
end

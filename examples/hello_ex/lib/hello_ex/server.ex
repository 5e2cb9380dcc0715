defmodule HelloEx.Server do
  @moduledoc "A tiny HTTP/1.0 server: `/health` answers ok, `/` names the node."
  use Task, restart: :permanent

  def start_link(port), do: Task.start_link(__MODULE__, :listen, [port])

  def listen(port) do
    {:ok, socket} =
      :gen_tcp.listen(port, [:binary, packet: :http_bin, active: false, reuseaddr: true, ip: {127, 0, 0, 1}])

    accept(socket)
  end

  defp accept(socket) do
    {:ok, client} = :gen_tcp.accept(socket)
    spawn(fn -> serve(client) end)
    accept(socket)
  end

  defp serve(client) do
    path =
      case :gen_tcp.recv(client, 0, 5000) do
        {:ok, {:http_request, _method, {:abs_path, path}, _version}} -> path
        _ -> "/"
      end

    body =
      case path do
        "/health" -> "ok\n"
        _ -> "node #{node()} version #{Application.spec(:hello_ex, :vsn)}\n"
      end

    :gen_tcp.send(client, "HTTP/1.0 200 OK\r\ncontent-length: #{byte_size(body)}\r\n\r\n#{body}")
    :gen_tcp.close(client)
  end
end
